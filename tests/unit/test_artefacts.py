"""High-norm artefact tokens (Darcet et al. 2024) on models with a planted outlier token."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitlens.analysis.artefacts import flag_outliers, high_norm_tokens, token_norms

from ..conftest import make_model


def reference_block_outputs(model, x):
    """The timm ViT forward, step by step, keeping every block's output."""
    with torch.no_grad():
        h = model.patch_embed(x)
        h = model._pos_embed(h)
        h = model.patch_drop(h)
        h = model.norm_pre(h)
        outs = []
        for blk in model.blocks:
            h = blk(h)
            outs.append(h)
    return outs


def plant(model, token: int, scale: float = 50.0):
    """Give patch ``token`` a huge positional embedding, so its residual stream has a huge norm."""
    P = model.num_prefix_tokens
    with torch.no_grad():
        idx = token if model.no_embed_class else P + token
        model.pos_embed[0, idx] += scale


@pytest.mark.parametrize("case", ["vit", "dinov2_reg4", "gap_no_cls", "non_square"])
def test_planted_outlier_is_the_only_flagged_token(case):
    model, x = make_model(case)
    gh, gw = model.patch_embed.grid_size
    target = (gh // 2) * gw + 1               # an interior patch: (gh//2, 1)
    plant(model, target)
    res = high_norm_tokens(model, x)
    assert res.mask.shape == res.norms.shape == (x.shape[0], gh, gw)
    expected = torch.zeros(x.shape[0], gh, gw, dtype=torch.bool)
    expected[:, gh // 2, 1] = True
    assert torch.equal(res.mask, expected)
    assert res.layer == len(model.blocks) - 1 and res.k == 5.0 and res.absolute is None
    assert res.prefix_norms.shape == (x.shape[0], model.num_prefix_tokens)
    np.testing.assert_allclose(res.fraction.numpy(), 1 / (gh * gw))

    # norms are the L2 norms of the last block's patch outputs, prefix dropped
    ref = reference_block_outputs(model, x)[-1]
    P = model.num_prefix_tokens
    np.testing.assert_allclose(res.norms.numpy(), ref[:, P:].norm(dim=-1).reshape(-1, gh, gw).numpy(), rtol=1e-5)


def test_block_choice_and_absolute_threshold():
    model, x = make_model("deit_distilled")
    outs = reference_block_outputs(model, x)
    norms, prefix, layout, layer = token_norms(model, x, layer=0)
    assert layer == 0 and layout.prefix_names == ("cls", "dist")
    np.testing.assert_allclose(norms.numpy(), outs[0][:, 2:].norm(dim=-1).reshape(-1, 4, 4).numpy(), rtol=1e-5)
    np.testing.assert_allclose(prefix.numpy(), outs[0][:, :2].norm(dim=-1).numpy(), rtol=1e-5)
    thr = float(norms.median())
    res = high_norm_tokens(model, x, layer=0, threshold=thr)
    assert torch.equal(res.mask, norms > thr) and res.k is None and res.absolute == thr
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        high_norm_tokens(model, x, layer=5)


def test_robust_rule_against_numpy_median_and_mad():
    g = torch.Generator().manual_seed(0)
    norms = 10 + torch.randn(3, 6, 5, generator=g)
    norms[0, 2, 3] = 40.0
    norms[2, 0, 0] = 16.0
    mask, thr = flag_outliers(norms, k=3.0)
    for b in range(3):
        v = norms[b].numpy().ravel().astype(np.float64)
        med = np.median(v)
        mad = np.median(np.abs(v - med))
        t = med + 3.0 * 1.4826 * mad
        assert float(thr[b]) == pytest.approx(t, rel=1e-5)
        np.testing.assert_array_equal(mask[b].numpy().ravel(), v > t)
    assert mask[0, 2, 3] and mask[2, 0, 0]
    # norms given directly go through the same rule
    res = high_norm_tokens(norms, k=3.0)
    assert torch.equal(res.mask, mask) and res.layer is None and res.layout is None


def test_errors():
    model, x = make_model("vit")
    with pytest.raises(ValueError, match="images are missing"):
        high_norm_tokens(model)
    with pytest.raises(ValueError, match="k must be a positive"):
        high_norm_tokens(torch.ones(1, 2, 2), k=0)
    with pytest.raises(ValueError, match=r"\[B, gh, gw\]"):
        high_norm_tokens(torch.ones(4, 4))
    with pytest.raises(TypeError, match="no token states"):
        high_norm_tokens("model.pt")
    from ..integration.test_swin import make_swin

    swin, sx = make_swin("swin_small", batch=1)
    with pytest.raises(ValueError, match="flat ViT-like"):
        high_norm_tokens(swin, sx)


def test_mark_tokens_outlines_exactly_the_flagged_cells():
    from vitlens.export.overlay import mark_tokens

    img = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((4, 6), bool)
    mask[1, 2] = True                        # cell x 20..29, y 10..19
    out = mark_tokens(img, mask, color=(255, 0, 0))
    red = (out == [255, 0, 0]).all(-1)
    ys, xs = np.nonzero(red)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 19, 20, 29)
    assert red[10, 20:30].all() and red[19, 20:30].all() and red[10:20, 20].all() and red[10:20, 29].all()
    assert not red[11:19, 21:29].any()        # outline only
    assert img.sum() == 0                     # input untouched
    # with a box: the grid covers only the box
    out = mark_tokens(img, mask, box=(0, 0, 30, 20), color=(0, 255, 0))
    ys, xs = np.nonzero((out == [0, 255, 0]).all(-1))
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 9, 10, 14)
    with pytest.raises(ValueError, match="2-D"):
        mark_tokens(img, np.zeros(4, bool))
    with pytest.raises(ValueError, match="color"):
        mark_tokens(img, mask, color=(300, 0, 0))
