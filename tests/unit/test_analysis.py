"""CLS maps and rollout against slow, direct per-image implementations of the formulas."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import vitlens
from vitlens.capture.cache import AttentionCache, TokenLayout

from ..conftest import make_model


def synthetic_cache(attn: list[torch.Tensor], prefix: tuple[str, ...], grid: tuple[int, int]) -> AttentionCache:
    """A cache filled with given per-layer attention, as capture would fill it."""
    return AttentionCache.from_tensors(attn, TokenLayout(len(prefix), prefix, grid, (4, 4),
                                                         (grid[0] * 4, grid[1] * 4)), model_name="synthetic")


def test_from_tensors_is_what_capture_records():
    model = __import__("timm").create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2).eval()
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(torch.randn(2, 3, 32, 32))
    assert cache.layout is not None
    rebuilt = AttentionCache.from_tensors([cache.attention(i) for i in cache.layers], cache.layout)
    torch.testing.assert_close(vitlens.rollout(rebuilt), vitlens.rollout(cache))
    torch.testing.assert_close(vitlens.cls_attention(rebuilt, layer=1, head=None),
                               vitlens.cls_attention(cache, layer=1, head=None))
    with pytest.raises(ValueError, match=r"layer 1: expected a \[B, heads, T, T\] tensor with T = 5"):
        AttentionCache.from_tensors([torch.rand(1, 2, 5, 5), torch.rand(1, 2, 4, 4)],
                                    TokenLayout(1, ("cls",), (2, 2), (4, 4), (8, 8)))


def random_attention(B, H, T, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(3 * torch.randn(B, H, T, T, generator=g), -1) for _ in range(L)]


# ------------------------------------------------------------------ references
def ref_cls_map(a: np.ndarray, cls: int, prefix: int, grid, fuse) -> np.ndarray:
    """One image: a [H, T, T] -> [gh, gw] by explicit loops."""
    H, T, _ = a.shape
    gh, gw = grid
    out = np.zeros((gh, gw))
    for r in range(gh):
        for c in range(gw):
            vals = [a[h, cls, prefix + r * gw + c] for h in range(H)]
            out[r, c] = fuse(vals)
    return out


def ref_rollout(layers: list[np.ndarray], cls: int | None, prefix: int, grid, discard=0.0,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """Abnar & Zuidema rollout for one image, as DESIGN.md §4 writes it, in float64.

    ``exclude``: patch indices whose key columns are zeroed after the discard step and
    whose map entries are 0 (the documented ``rollout(exclude=...)``)."""
    T = layers[0].shape[-1]
    R = np.eye(T)
    for a in layers:
        fused = a.mean(axis=0).astype(np.float64)
        if discard > 0:
            cand = [(fused[i, j], i, j) for i in range(T) for j in range(T) if j != cls]
            cand.sort()
            for _, i, j in cand[: int(discard * len(cand))]:
                fused[i, j] = 0.0
        if exclude is not None:
            for j in exclude:
                fused[:, prefix + j] = 0.0
        ahat = 0.5 * fused + 0.5 * np.eye(T)
        ahat = ahat / ahat.sum(axis=1, keepdims=True)
        R = ahat @ R
    m = R[cls, prefix:] if cls is not None else R[prefix:, prefix:].mean(axis=0)
    if exclude is not None:
        m = m.copy()
        m[list(exclude)] = 0.0
    return (m / m.sum()).reshape(grid)


# ------------------------------------------------------------------ CLS maps
@pytest.mark.parametrize("prefix", [("cls",), ("cls", "dist"), ("cls", "reg", "reg", "reg", "reg")])
def test_cls_attention_matches_loops(prefix):
    grid = (3, 5)
    T = len(prefix) + 15
    attn = random_attention(2, 4, T, 3)
    cache = synthetic_cache(attn, prefix, grid)
    for layer in (0, -1, 1):
        a = attn[layer].numpy()
        for head, fuse in [("mean", np.mean), ("max", np.max), ("min", np.min)]:
            got = vitlens.cls_attention(cache, layer=layer, head=head)
            assert got.shape == (2, 3, 5)
            for b in range(2):
                np.testing.assert_allclose(got[b].numpy(), ref_cls_map(a[b], 0, len(prefix), grid, fuse), rtol=1e-6)
        per_head = vitlens.cls_attention(cache, layer=layer, head=None)
        assert per_head.shape == (2, 4, 3, 5)
        for h in range(4):
            np.testing.assert_allclose(vitlens.cls_attention(cache, layer=layer, head=h).numpy(),
                                       per_head[:, h].numpy())
            np.testing.assert_allclose(
                per_head[1, h].numpy(), ref_cls_map(a[1, h:h + 1], 0, len(prefix), grid, np.mean), rtol=1e-6)
        np.testing.assert_allclose(vitlens.cls_attention(cache, layer=layer, head=-1).numpy(),
                                   per_head[:, 3].numpy())
    # raw probabilities: the patch part does not sum to 1 unless renormalised
    raw = vitlens.cls_attention(cache, head=0)
    assert (raw.sum((-1, -2)) < 1).all()
    ren = vitlens.cls_attention(cache, head=0, renormalize=True)
    torch.testing.assert_close(ren.sum((-1, -2)), torch.ones(2))


def test_cls_attention_errors():
    cache = synthetic_cache(random_attention(1, 4, 10, 2), ("cls",), (3, 3))
    with pytest.raises(ValueError, match=r"head 4 is out of range.*0..3"):
        vitlens.cls_attention(cache, head=4)
    with pytest.raises(ValueError, match="head must be one of"):
        vitlens.cls_attention(cache, head="median")
    with pytest.raises(ValueError, match=r"layer 2 is out of range.*0..1"):
        vitlens.cls_attention(cache, layer=2)
    gap = synthetic_cache(random_attention(1, 4, 9, 2), (), (3, 3))
    with pytest.raises(ValueError, match="no CLS token.*rollout"):
        vitlens.cls_attention(gap)


# ------------------------------------------------------------------ rollout
@pytest.mark.parametrize("prefix", [("cls",), ("cls", "dist"), ("cls", "reg", "reg"), ()])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("step", [None, 1, 2])
def test_rollout_matches_reference(prefix, discard, step, monkeypatch):
    grid = (3, 4)
    T = len(prefix) + 12
    if step is not None:  # CPU rollout takes images a chunk at a time: 1 + 1 + 1 and 2 + 1 images
        monkeypatch.setattr(sys.modules["vitlens.analysis.rollout"], "_CHUNK_BYTES", step * T * T * 4)
    attn = random_attention(3, 2, T, 4, seed=7)
    cache = synthetic_cache(attn, prefix, grid)
    got = vitlens.rollout(cache, discard_ratio=discard)
    assert got.shape == (3, 3, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.sum((-1, -2)), torch.ones(3))
    cls = 0 if prefix else None
    for b in range(3):
        ref = ref_rollout([a[b].numpy() for a in attn], cls, len(prefix), grid, discard)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("prefix", [("cls",), ("cls", "reg", "reg"), ()])
@pytest.mark.parametrize("step", [None, 1])
def test_rollout_exclude_matches_reference(prefix, step, monkeypatch):
    grid = (3, 4)
    T = len(prefix) + 12
    if step is not None:  # one image per chunk: each chunk must get its own image's mask
        monkeypatch.setattr(sys.modules["vitlens.analysis.rollout"], "_CHUNK_BYTES", step * T * T * 4)
    attn = random_attention(2, 2, T, 3, seed=11)
    cache = synthetic_cache(attn, prefix, grid)
    exclude = torch.zeros(2, 3, 4, dtype=torch.bool)
    exclude[0, 1, 2] = exclude[0, 0, 0] = exclude[1, 2, 3] = True
    got = vitlens.rollout(cache, discard_ratio=0.3, exclude=exclude)
    cls = 0 if prefix else None
    for b in range(2):
        idx = np.flatnonzero(exclude[b].flatten().numpy())
        ref = ref_rollout([a[b].numpy() for a in attn], cls, len(prefix), grid, 0.3, exclude=idx)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-4, atol=1e-7)
    assert (got[exclude] == 0).all()
    assert not torch.allclose(got, vitlens.rollout(cache, discard_ratio=0.3))
    with pytest.raises(ValueError, match=r"exclude must be a \[B, gh, gw\] = \[B, 3, 4\] bool"):
        vitlens.rollout(cache, exclude=torch.zeros(2, 4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="leaves no patch token"):
        vitlens.rollout(cache, exclude=torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="exclude has 3 images, the cache 2"):
        vitlens.rollout(cache, exclude=torch.zeros(3, 3, 4, dtype=torch.bool))


def test_rollout_single_layer_is_the_residual_formula():
    attn = random_attention(1, 3, 5, 1)
    cache = synthetic_cache(attn, ("cls",), (2, 2))
    a = attn[0][0].mean(0)
    ahat = 0.5 * a + 0.5 * torch.eye(5)
    row = (ahat / ahat.sum(-1, keepdim=True))[0, 1:]
    torch.testing.assert_close(vitlens.rollout(cache)[0].flatten(), row / row.sum())


def test_rollout_head_fusions_and_discard_keeps_cls_column():
    attn = random_attention(2, 3, 10, 2, seed=3)
    cache = synthetic_cache(attn, ("cls",), (3, 3))
    for fusion in ("max", "min"):
        assert not torch.allclose(vitlens.rollout(cache, head=fusion), vitlens.rollout(cache))
    from vitlens.analysis.rollout import discard_lowest

    fused = attn[0].mean(1)
    kept = discard_lowest(fused, 0.95, keep_col=0)
    torch.testing.assert_close(kept[:, :, 0], fused[:, :, 0])
    assert (kept[:, :, 1:] == 0).float().mean() > 0.9


def test_rollout_errors():
    model, x = make_model("vit")
    with vitlens.capture(model, layers=[1, 2]) as partial:
        model(x)
    with pytest.raises(ValueError, match="every layer from layer 0"):
        vitlens.rollout(partial)
    with vitlens.capture(model, rows="prefix") as rows:
        model(x)
    with pytest.raises(ValueError, match="rows='all'"):
        vitlens.rollout(rows)
    with vitlens.capture(model) as full:
        model(x)
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        vitlens.rollout(full, discard_ratio=1.0)


# ------------------------------------------------------------ on real models
@pytest.mark.parametrize("case", ["deit_distilled", "dinov2_reg4", "gap_no_cls", "non_square"])
def test_maps_on_captured_models_match_references(case):
    model, x = make_model(case)
    with vitlens.capture(model) as cache:
        model(x)
    lay = cache.layout
    layers = [cache.attention(i) for i in cache.layers]
    roll = vitlens.rollout(cache)
    assert roll.shape == (2, *lay.grid_size)
    for b in range(2):
        ref = ref_rollout([a[b].double().numpy() for a in layers], lay.cls_index, lay.num_prefix_tokens,
                          lay.grid_size)
        np.testing.assert_allclose(roll[b].numpy(), ref, rtol=1e-4, atol=1e-7)
        if lay.has_cls:
            np.testing.assert_allclose(
                vitlens.cls_attention(cache)[b].numpy(),
                ref_cls_map(layers[-1][b].numpy(), 0, lay.num_prefix_tokens, lay.grid_size, np.mean), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:vitlens.attention_maps:DeprecationWarning")
def test_attention_maps_pipeline_cls_uses_prefix_rows_only():
    model, x = make_model("deit_distilled")
    res = vitlens.attention_maps(model, x, method="cls", layer=-1, head="mean")
    with vitlens.capture(model) as cache:
        logits = model(x)
    torch.testing.assert_close(res.maps, vitlens.cls_attention(cache, layer=-1))
    assert torch.equal(res.logits, logits) and res.layer == 2
    roll = vitlens.attention_maps(model, x, method="rollout", head="mean", discard_ratio=0.2)
    torch.testing.assert_close(roll.maps, vitlens.rollout(cache, discard_ratio=0.2))
    with pytest.raises(ValueError, match="per-head maps exist only"):
        vitlens.attention_maps(model, x, method="rollout", head=1)


def _topk_discard_reference(fused, discard_ratio, keep_col):
    """The previous implementation: a full topk of the k smallest entries outside the kept column."""
    b, t, _ = fused.shape
    ranked = fused.clone()
    n = t * t
    if keep_col is not None:
        ranked[:, :, keep_col] = float("inf")
        n = t * (t - 1)
    k = int(discard_ratio * n)
    if k == 0:
        return fused
    idx = ranked.reshape(b, -1).topk(k, dim=-1, largest=False).indices
    return fused.reshape(b, -1).scatter(1, idx, 0.0).reshape(b, t, t)


@pytest.mark.parametrize("t", [2, 5, 17, 65])
@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("keep_col", [0, None])
def test_kthvalue_discard_equals_the_topk_implementation(t, ratio, keep_col):
    from vitlens.analysis.rollout import discard_lowest

    g = torch.Generator().manual_seed(t)
    a = torch.rand(3, t, t, generator=g).softmax(-1)
    a[1, : t // 2] = 0.0                        # exact zeros: ties at a zero threshold
    got = discard_lowest(a, ratio, keep_col)
    assert torch.equal(got, _topk_discard_reference(a, ratio, keep_col))
    n = t * (t - 1) if keep_col is not None else t * t
    # exactly k entries discarded (counted on an input without zeros)
    b = torch.rand(2, t, t, generator=g) + 0.1
    assert int((discard_lowest(b, ratio, keep_col) == 0).sum()) == 2 * int(ratio * n)


def test_kthvalue_discard_breaks_positive_ties_by_index():
    from vitlens.analysis.rollout import discard_lowest

    a = torch.tensor([[[0.5, 0.2, 0.2], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]])
    out = discard_lowest(a, 0.34, 0)            # 6 candidates, k = 2 of the three 0.2s outside column 0
    assert int((out == 0).sum()) == 2
    assert out[0, 0, 0] == 0.5 and out[0, 1, 0] == 0.2  # column 0 spared
    assert out[0, 0, 1] == 0 and out[0, 0, 2] == 0 and out[0, 1, 1] == 0.2   # the first two in index order
