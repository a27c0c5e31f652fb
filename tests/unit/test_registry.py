"""The method registry: one object per method; explain, the CLI and the docs table derive from it."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import vitlens
from vitlens.analysis import registry
from vitlens.analysis.registry import MethodOutput, method_table, register_method

from ..conftest import make_model

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def test_every_method_is_a_complete_registered_object():
    ms = vitlens.methods()
    names = [m.name for m in ms]
    assert names[:4] == ["cls", "rollout", "grad-rollout", "chefer"] and {"attnlrp", "cp-lrp"} <= set(names)
    assert tuple(names) == vitlens.EXPLAIN_METHODS
    for m in ms:
        assert dataclasses.is_dataclass(m.options) and m.options.__dataclass_params__.frozen
        assert m.defaults == {f.name: f.default for f in dataclasses.fields(m.options)}
        assert m.summary and m.cost and m.families
        assert len(m.doc) > 40, f"{m.name}: the docstring must carry the formula"
        assert isinstance(m.class_specific, bool)
    lrp = {m.name: m for m in ms}["attnlrp"]
    assert "Achtibat" in lrp.paper and "Prop. 3.1" in lrp.doc


def test_old_tables_are_views_of_the_registry():
    import importlib

    ex = importlib.import_module("vitlens.analysis.explain")

    assert ex.METHODS == vitlens.EXPLAIN_METHODS
    assert ex.OPTIONS["rollout"] == {"head": "mean", "discard_ratio": 0.0}
    assert set(ex.CLASS_AGNOSTIC) == {"cls", "rollout", "random"}
    src = Path(ex.__file__).read_text()
    assert "_IMPL" not in src and "OPTIONS: dict" not in src   # the parallel tables are gone


def test_docs_table_is_the_generated_one():
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(r"<!-- methods-table:start[^>]*-->\n(.*?)\n<!-- methods-table:end -->", text, re.S)
    assert m, "docs/methods.md lost its generated method table markers"
    assert m.group(1) == method_table(), "docs/methods.md's method table is stale: " \
        "paste the output of `python -m vitlens.analysis.registry`"


def test_cli_choices_come_from_the_registry():
    from vitlens.cli.attend import EXPLAIN_METHODS, attend

    opt = next(p for p in attend.params if p.name == "method")
    assert list(opt.type.choices) == [m.name for m in vitlens.methods()] == list(EXPLAIN_METHODS)


def test_a_registered_method_works_in_explain_and_evaluate(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclasses.dataclass(frozen=True)
    class CornerOptions:
        weight: float = 1.0

    @register_method("corner", CornerOptions, summary="top-left patch", cost="1 forward", class_specific=False)
    def _corner(model, images, target, opts):
        """``map[0, 0] = weight``, else 0."""
        from vitlens.analysis.explain import _light_forward

        logits, layout = _light_forward(model, images)
        maps = torch.zeros(images.shape[0], *layout.grid_size)
        maps[:, 0, 0] = opts.weight
        return MethodOutput(maps, logits, layout, {})

    model, x = make_model("vit")
    res = vitlens.explain(model, x, "corner", weight=2.0, details=True)
    assert res.maps[:, 0, 0].tolist() == [2.0, 2.0] and res.options == {"weight": 2.0}
    with pytest.raises(TypeError, match="its options are: weight"):
        vitlens.explain(model, x, "corner", wieght=2.0)
    with pytest.raises(ValueError, match="already registered"):
        register_method("corner", CornerOptions, summary="", cost="", class_specific=False)(_corner)
    r = vitlens.evaluate(model, x, methods=["corner"], metrics=["deletion"], steps=2)
    assert "corner" in r


def test_unknown_method_suggests():
    model, x = make_model("vit")
    with pytest.raises(ValueError, match="Did you mean 'attnlrp'"):
        vitlens.explain(model, x, "attn_lrp")
