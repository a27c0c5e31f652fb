"""One vocabulary across the public API (docs/concepts.md, "Vocabulary"; issue #15).

The public signatures are read with ``inspect``: a parameter (or a result field) spelled
with a retired synonym fails, and so does a new callback not named ``progress``, or a
``target`` that is not a class index. Old names still work for one release, with a
DeprecationWarning.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing
import warnings
from pathlib import Path

import pytest
import torch

import vitlens

REPO = Path(__file__).resolve().parents[2]

#: Retired spelling -> the vocabulary's word for it.
RETIRED = {
    "block": "layer", "blocks": "layers", "block_index": "layer", "layer_idx": "layer", "layer_index": "layer",
    "head_fusion": "head", "fusion": "head", "head_idx": "head", "head_index": "head", "how": "head",
    "on_batch": "progress", "callback": "progress", "on_progress": "progress", "progress_callback": "progress",
    "class_idx": "target", "class_index": "target", "target_class": "target", "label_or_prediction": "target_source",
}

#: Modules whose public names form the API the vocabulary covers.
MODULES = ["vitlens", "vitlens.analysis", "vitlens.analysis.cls_attention", "vitlens.analysis.rollout",
           "vitlens.analysis.received", "vitlens.analysis.distance", "vitlens.analysis.artefacts",
           "vitlens.analysis.explain", "vitlens.analysis.faithfulness", "vitlens.analysis.importance",
           "vitlens.analysis.gradients", "vitlens.analysis.shape_bias", "vitlens.analysis.maps",
           "vitlens.analysis.texture_attention", "vitlens.data.cue_conflict",
           "vitlens.batch", "vitlens.data", "vitlens.models", "vitlens.capture", "vitlens.pl"]


def _public(module):
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for n in names:
        obj = getattr(module, n, None)
        if obj is None or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if not (getattr(obj, "__module__", "") or "").startswith("vitlens"):
            continue
        yield f"{module.__name__}.{n}", obj


def api() -> dict[str, object]:
    out: dict[str, object] = {}
    for m in MODULES:
        for name, obj in _public(importlib.import_module(m)):
            out.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return out


def names_of(obj) -> list[tuple[str, str, object]]:
    """(where, name, annotation) for every parameter and result field of ``obj``."""
    found = []
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            found += [("field", f.name, f.type) for f in dataclasses.fields(obj)]
        elif hasattr(obj, "_fields"):                      # NamedTuple
            found += [("field", f, obj.__annotations__.get(f)) for f in obj._fields]
        callables = [("__init__", obj.__init__)] + [(k, v) for k, v in vars(obj).items()
                                                   if inspect.isfunction(v) and not k.startswith("_")]
    else:
        callables = [("", obj)]
    for where, f in callables:
        try:
            sig = inspect.signature(f)
        except (TypeError, ValueError):
            continue
        for p in sig.parameters.values():
            if p.name in ("self", "cls") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            found.append((where or "param", p.name, p.annotation if p.annotation is not p.empty else None,
                          ) + ((p.default,) if p.default is not p.empty else ()))
    return found


def test_the_api_is_found():
    names = api()
    for must in ("vitlens.analysis.cls_attention.cls_attention", "vitlens.analysis.rollout.rollout",
                 "vitlens.analysis.artefacts.high_norm_tokens", "vitlens.analysis.faithfulness.evaluate",
                 "vitlens.analysis.distance.head_statistics", "vitlens.batch.run_export"):
        assert must in names


def test_no_retired_synonyms_in_public_signatures_or_result_fields():
    drift = []
    for qual, obj in api().items():
        for where, name, *_ in names_of(obj):
            if name in RETIRED:
                drift.append(f"{qual} ({where}): {name!r} -> call it {RETIRED[name]!r}")
    assert not drift, "vocabulary drift (docs/concepts.md, Vocabulary):\n" + "\n".join(drift)


#: Callables that are not progress callbacks, and why.
OTHER_CALLBACKS = {
    ("vitlens.batch.run_export", "total"): "called once with the number of inputs to do (a bar's length)",
    ("vitlens.capture.adapters.Adapter", "set_layout"): "the adapter protocol's layout sink, not a user callback",
}


def _is_callable_annotation(ann) -> bool:
    """A callback: a callable returning None (a transform, which returns a value, is not one)."""
    text = ann if isinstance(ann, str) else repr(ann)
    return re.search(r"Callable\[\[.*\], None\]", str(text)) is not None


def test_callbacks_are_called_progress():
    bad = []
    for qual, obj in api().items():
        for where, name, ann, *_ in names_of(obj):
            if where == "field":
                continue
            if (ann is not None and _is_callable_annotation(ann) and name != "progress"
                    and (qual, name) not in OTHER_CALLBACKS):
                bad.append(f"{qual}: {name}: {ann}")
    assert not bad, "callbacks are progress= (called with the number of inputs done):\n" + "\n".join(bad)


def test_target_is_always_the_class_to_explain():
    """``target`` is the class explained (None, an int, or one per image); evaluate's choice
    between the predicted class and the label is ``target_source``."""
    bad = []
    for qual, obj in api().items():
        for where, name, ann, *default in names_of(obj):
            if name == "target" and (default and isinstance(default[0], str) or ann in ("str", str)):
                bad.append(f"{qual}: target={default[0] if default else ''!r} ({ann})")
    assert not bad, "target must be a class index, not a mode:\n" + "\n".join(bad)
    assert inspect.signature(vitlens.evaluate).parameters["target_source"].default == "predicted"


def test_layers_and_heads_are_spelled_one_way():
    """Any parameter about layers or heads is layer/layers, head/heads."""
    bad = []
    for qual, obj in api().items():
        for where, name, *_ in names_of(obj):
            if re.fullmatch(r"(block|blk|layer|head)s?_?(id|idx|index|no|num|nr)s?", name):
                bad.append(f"{qual}: {name}")
    assert not bad, bad


def test_vocabulary_is_written_in_concepts():
    text = (REPO / "docs" / "concepts.md").read_text()
    assert "## Vocabulary" in text
    section = text.split("## Vocabulary", 1)[1].split("\n## ", 1)[0]
    for word in ("`layer`", "`layers`", "`head`", "`heads`", "`target`", "`target_source`", "`progress`"):
        assert word in section, word
    for old in ("`block`", "`head_fusion`", "`on_batch`"):
        assert old in section, f"the retired name {old} is listed with its replacement"


# ------------------------------------------------------------- old names keep working
def test_old_names_still_work_with_a_deprecation_warning(demo):
    model, cfg = demo
    x = torch.randn(2, 3, 32, 32)
    with vitlens.capture(model) as cache:
        model(x)
    with pytest.warns(DeprecationWarning, match="head_fusion"):
        old = vitlens.rollout(cache, head_fusion="max")
    assert torch.equal(old, vitlens.rollout(cache, head="max"))

    with pytest.warns(DeprecationWarning, match="block"):
        old = vitlens.high_norm_tokens(model, x, block=1)
    new = vitlens.high_norm_tokens(model, x, layer=1)
    assert torch.equal(old.mask, new.mask) and new.layer == 1
    with pytest.warns(DeprecationWarning, match="block"):
        assert new.block == 1

    seen: list[int] = []
    with pytest.warns(DeprecationWarning, match="on_batch"):
        vitlens.head_statistics(model, x, batch_size=1, on_batch=seen.append)
    assert seen == [1, 1]

    with pytest.warns(DeprecationWarning, match="target"):
        old = vitlens.evaluate(model, x, methods="random", metrics=["deletion"], target="predicted", steps=4)
    new = vitlens.evaluate(model, x, methods="random", metrics=["deletion"], target_source="predicted", steps=4)
    assert old.values == new.values and new.params["target_source"] == "predicted"

    with pytest.raises(TypeError, match="both"):
        vitlens.rollout(cache, head="mean", head_fusion="max")


def test_new_names_do_not_warn(demo):
    model, _ = demo
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with vitlens.capture(model) as cache:
            model(x)
        vitlens.rollout(cache, head="min")
        vitlens.high_norm_tokens(model, x, layer=-1)
        vitlens.head_statistics(model, x, progress=lambda n: None)
