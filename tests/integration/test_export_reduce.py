"""Export reduces attention on record by default (issue #17): the file holds the same values as the
older path that kept every layer's full attention for the batch, bit for bit (rollout within 1e-6:
the forward-order product reorders floating point). On an accelerator the export computes the
ViTs' layers in image chunks (export_chunk); that path is checked against this one in
tests/unit/test_chunked.py (float32 rounding: contiguous copies of q and k take another
matrix-product kernel than timm's strided views)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitlens
from vitlens.batch import ExportOptions, plan_analyses, run_export

from .test_export import make_inputs


def _export(model, cfg, inputs, out, **kw):
    run_export(model, cfg, inputs, out, ExportOptions(batch_size=3, workers=0, **kw))
    with vitlens.export.read(out) as f:
        return {k: f[k][:] for k in f.keys()}   # every row-indexed dataset


def _tiny(name: str, **kw):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()
    return vitlens.load_model(model, device="cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("reduce-in") / "in")


@pytest.mark.parametrize("case", ["demo", "gap_no_cls", "registers", "swin"])
def test_reduced_export_equals_full_cache_export(case, inputs, tmp_path, demo):
    if case == "demo":
        model, cfg = demo
    elif case == "gap_no_cls":
        model, cfg = _tiny("vit_medium_patch16_gap_256", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    elif case == "registers":
        model, cfg = _tiny("vit_small_patch14_reg4_dinov2", img_size=28, depth=2, embed_dim=64, num_heads=2)
    else:
        model, cfg = _tiny("swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=24,
                           depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
    opts = dict(full=True, layers=[0, -1], dtype="float32") if case == "demo" else {}
    reduced = _export(model, cfg, inputs, tmp_path / "reduced.h5", **opts)
    full = _export(model, cfg, inputs, tmp_path / "full.h5", reduce=False, **opts)
    assert reduced.keys() == full.keys()
    assert ("cls_attention" in reduced) == (case in ("demo", "registers"))
    ok = full["images/ok"]
    assert ok.sum() >= 6
    assert plan_analyses(model, ExportOptions()).chunk is None           # on the CPU: whole layers
    for key in reduced:
        a, b = reduced[key][ok], full[key][ok]
        if key == "rollout":
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)   # same values, bit for bit
    assert {k for k in reduced if k.startswith("attention/")} == (
        {"attention/layer_00", "attention/layer_05"} if case == "demo" else set())


def test_plan_reduces_only_what_the_analyses_need(demo):
    model, cfg = demo
    plan = plan_analyses(model, ExportOptions())
    assert plan.reductions == ("cls", "rollout", "distance") and plan.rows == "all"
    plan = plan_analyses(model, ExportOptions(analyses=["logits", "cls"]))
    assert plan.reductions == ("cls",) and plan.rows == "prefix"
    plan = plan_analyses(model, ExportOptions(analyses=["logits"], full=True, layers=[1]))
    assert plan.reductions == () and plan.capture_layers == (1,)
    assert plan_analyses(model, ExportOptions(reduce=False)).reductions == ()
