"""Mean attention distance, attention entropy and their streaming aggregation, against slow
direct implementations of the definitions (DESIGN.md §4; Dosovitskiy et al. 2021, Fig. 7)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vitlens
from vitlens.capture.cache import AttentionCache, TokenLayout

from ..conftest import make_model


def synthetic_cache(attn: list[torch.Tensor], prefix: tuple[str, ...], grid, patch) -> AttentionCache:
    layout = TokenLayout(len(prefix), prefix, tuple(grid), tuple(patch), (grid[0] * patch[0], grid[1] * patch[1]))
    return AttentionCache.from_tensors(attn, layout, model_name="synthetic")


def random_attention(B, H, T, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(3 * torch.randn(B, H, T, T, generator=g), -1) for _ in range(L)]


# ------------------------------------------------------------------ references
def ref_stats(a: np.ndarray, prefix: int, grid, patch) -> tuple[np.ndarray, np.ndarray]:
    """One image, one layer: a [H, T, T] -> (distance [H], entropy [H]) by explicit loops."""
    H = a.shape[0]
    gh, gw = grid
    ph, pw = patch
    n = gh * gw
    dist = np.zeros(H)
    ent = np.zeros(H)
    for h in range(H):
        for q in range(n):
            qr, qc = divmod(q, gw)
            row = [float(a[h, prefix + q, prefix + k]) for k in range(n)]
            total = sum(row)
            dq = eq = 0.0
            for k in range(n):
                kr, kc = divmod(k, gw)
                p = row[k] / total
                d = math.hypot((qr + 0.5) * ph - (kr + 0.5) * ph, (qc + 0.5) * pw - (kc + 0.5) * pw)
                dq += p * d
                if p > 0:
                    eq -= p * math.log(p)
            dist[h] += dq / n
            ent[h] += eq / n
    return dist, ent


# ------------------------------------------------------------------ sanity
def test_uniform_attention_14x14_grid_of_16px_patches_is_about_116_5_px():
    centres = [((r + 0.5) * 16, (c + 0.5) * 16) for r in range(14) for c in range(14)]
    total = 0.0
    for (y1, x1) in centres:          # uniform weights: plain mean over all query/key pairs
        for (y2, x2) in centres:
            total += math.hypot(y1 - y2, x1 - x2)
    expected = total / len(centres) ** 2
    assert expected == pytest.approx(116.5, abs=0.05)

    T = 1 + 196
    attn = torch.full((1, 2, T, T), 1.0 / T)      # uniform over CLS + patches: CLS dropped, renormalised
    cache = synthetic_cache([attn], ("cls",), (14, 14), (16, 16))
    got = vitlens.mean_attention_distance(cache)
    assert got.shape == (1, 1, 2) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert float(got[0, 0, 0]) == pytest.approx(116.5, abs=0.05)
    ent = vitlens.attention_entropy(cache)
    np.testing.assert_allclose(ent.numpy(), math.log(196), rtol=1e-5)


def test_one_hot_attention_gives_zero_entropy_and_exact_distance():
    # every query looks only at patch 0 (top-left): distance = mean over queries of |q - 0|
    gh, gw, ph, pw = 3, 4, 5, 7
    n = gh * gw
    attn = torch.zeros(1, 1, n, n)
    attn[..., 0] = 1.0
    cache = synthetic_cache([attn], (), (gh, gw), (ph, pw))
    expected = np.mean([math.hypot(r * ph, c * pw) for r in range(gh) for c in range(gw)])
    assert float(vitlens.mean_attention_distance(cache)) == pytest.approx(expected, rel=1e-6)
    assert float(vitlens.attention_entropy(cache)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("prefix", [(), ("cls",), ("cls", "dist"), ("cls", "reg", "reg", "reg", "reg")])
def test_matches_loop_reference_non_square_grid_and_patches(prefix):
    grid, patch = (3, 5), (4, 6)
    T = len(prefix) + 15
    attn = random_attention(2, 3, T, 2, seed=len(prefix))
    cache = synthetic_cache(attn, prefix, grid, patch)
    dist = vitlens.mean_attention_distance(cache)
    ent = vitlens.attention_entropy(cache)
    assert dist.shape == ent.shape == (2, 2, 3)
    for b in range(2):
        for layer in range(2):
            rd, re = ref_stats(attn[layer][b].numpy(), len(prefix), grid, patch)
            np.testing.assert_allclose(dist[b, layer].numpy(), rd, rtol=1e-5)
            np.testing.assert_allclose(ent[b, layer].numpy(), re, rtol=1e-5)


def test_layers_argument_chunking_and_float16():
    attn = random_attention(5, 2, 1 + 12, 3, seed=3)
    cache = synthetic_cache([a.half() for a in attn], ("cls",), (3, 4), (8, 8))
    full = vitlens.mean_attention_distance(cache)
    np.testing.assert_array_equal(vitlens.mean_attention_distance(cache, layers=-1).numpy(), full[:, 2:].numpy())
    np.testing.assert_array_equal(vitlens.mean_attention_distance(cache, layers=[2, 0]).numpy(),
                                  full[:, [2, 0]].numpy())
    import vitlens.analysis.distance as mod
    old = mod._CHUNK_ELEMENTS
    mod._CHUNK_ELEMENTS = 1       # one image per chunk: same numbers
    try:
        np.testing.assert_allclose(vitlens.mean_attention_distance(cache).numpy(), full.numpy(), rtol=1e-6)
    finally:
        mod._CHUNK_ELEMENTS = old
    rd, _ = ref_stats(attn[1][4].half().float().numpy(), 1, (3, 4), (8, 8))
    np.testing.assert_allclose(full[4, 1].numpy(), rd, rtol=1e-4)


def test_errors_prefix_rows_unrecorded_layer_empty():
    model, x = make_model("vit")
    with vitlens.capture(model, rows="prefix") as cache:
        model(x)
    with pytest.raises(ValueError, match="rows='all'"):
        vitlens.mean_attention_distance(cache)
    with vitlens.capture(model, layers=[0]) as cache:
        model(x)
    with pytest.raises(ValueError, match="not recorded"):
        vitlens.attention_entropy(cache, layers=[1])
    with vitlens.capture(model) as empty:
        pass
    with pytest.raises(ValueError, match="nothing was recorded"):
        vitlens.mean_attention_distance(empty)


# ------------------------------------------------------------------ real models
@pytest.mark.parametrize("case", ["deit_distilled", "dinov2_reg4", "gap_no_cls", "non_square"])
def test_real_models_match_reference_with_layout_read_from_model(case):
    model, x = make_model(case)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    dist = vitlens.mean_attention_distance(cache)
    ent = vitlens.attention_entropy(cache)
    prefix = int(model.num_prefix_tokens)                    # straight from the timm model
    grid = tuple(model.patch_embed.grid_size)
    patch = tuple(model.patch_embed.patch_size)
    assert dist.shape == (x.shape[0], len(model.blocks), model.blocks[0].attn.num_heads)
    for layer in (0, len(model.blocks) - 1):
        a = cache.attention(layer)
        assert a.shape[-1] == prefix + grid[0] * grid[1]
        for b in range(x.shape[0]):
            rd, re = ref_stats(a[b].numpy(), prefix, grid, patch)
            np.testing.assert_allclose(dist[b, layer].numpy(), rd, rtol=1e-4)
            np.testing.assert_allclose(ent[b, layer].numpy(), re, rtol=1e-4)
    assert torch.isfinite(dist).all() and (dist > 0).all()


@pytest.mark.parametrize("case", ["swin_pad", "swinv2_pad"])
def test_swin_per_block_in_stage_coordinates(case):
    from ..integration.test_swin import make_swin

    model, x = make_swin(case, batch=1)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    dist = vitlens.mean_attention_distance(cache)
    ent = vitlens.attention_entropy(cache)
    L = cache.num_layers
    assert dist.shape == (1, L, max(cache.layer_heads))
    for layer in range(L):
        wl = cache.layout_of(layer)
        dense = cache.dense_attention(layer)[0].double().numpy()     # [h, N, N], padding cropped
        (H, W), (ph, pw) = wl.grid_size, wl.patch_size
        heads = dense.shape[0]
        for h in range(heads):
            tot_d = tot_e = 0.0
            for q in range(H * W):
                row = dense[h, q]
                p = row / row.sum()
                qy, qx = divmod(q, W)
                ky, kx = np.divmod(np.arange(H * W), W)
                d = np.hypot((qy - ky) * ph, (qx - kx) * pw)
                tot_d += (p * d).sum()
                nz = p[p > 0]
                tot_e -= (nz * np.log(nz)).sum()
            assert float(dist[0, layer, h]) == pytest.approx(tot_d / (H * W), rel=1e-4)
            assert float(ent[0, layer, h]) == pytest.approx(tot_e / (H * W), rel=1e-4, abs=1e-5)
        assert torch.isnan(dist[0, layer, heads:]).all()
        # a head never reaches beyond its window: bounded by the window diagonal
        wh, ww = wl.window_size
        assert float(dist[0, layer, :heads].max()) <= math.hypot((wh - 1) * ph, (ww - 1) * pw) + 1e-3


# ------------------------------------------------------------------ aggregation
def test_head_statistics_accumulator_matches_numpy_over_concatenated_data():
    g = torch.Generator().manual_seed(0)
    batches = [50 + 10 * torch.randn(n, 3, 4, generator=g, dtype=torch.float64) for n in (1, 7, 3, 16)]
    batches[2][1, 0, 2] = float("nan")                  # a head a layer does not have
    oks = [None, torch.tensor([True, False, True, True, True, True, False]), None, None]
    acc = vitlens.HeadStatistics()
    for v, ok in zip(batches, oks):
        acc.update(v.float() if ok is None else v, ok)
    kept = np.concatenate([v.numpy() if ok is None else v.numpy()[ok.numpy()] for v, ok in zip(batches, oks)])
    assert acc.images == kept.shape[0] == 25 and acc.failed == 2
    np.testing.assert_allclose(acc.mean.numpy(), np.nanmean(kept, 0), rtol=1e-6)
    np.testing.assert_allclose(acc.std().numpy(), np.nanstd(kept, 0), rtol=1e-5)
    np.testing.assert_allclose(acc.std(ddof=1).numpy(), np.nanstd(kept, 0, ddof=1), rtol=1e-5)
    assert acc.count[0, 2] == 24 and acc.count[1, 1] == 25
    lmean, lstd = acc.layer_summary()
    flat = kept.transpose(1, 0, 2).reshape(3, -1)
    np.testing.assert_allclose(lmean.numpy(), np.nanmean(flat, 1), rtol=1e-6)
    np.testing.assert_allclose(lstd.numpy(), np.nanstd(flat, 1), rtol=1e-5)

    # merging two halves (Chan) equals the single stream
    a, b = vitlens.HeadStatistics(), vitlens.HeadStatistics()
    for i, (v, ok) in enumerate(zip(batches, oks)):
        (a if i % 2 else b).update(v.float() if ok is None else v, ok)
    a.merge(b)
    np.testing.assert_allclose(a.mean.numpy(), acc.mean.numpy(), rtol=1e-9)
    np.testing.assert_allclose(a.std().numpy(), acc.std().numpy(), rtol=1e-9)
    assert (a.images, a.failed) == (25, 2)


def test_accumulator_is_stable_for_large_offsets():
    g = torch.Generator().manual_seed(1)
    data = 1e6 + torch.randn(4000, 1, 2, generator=g, dtype=torch.float64) * 1e-2
    acc = vitlens.HeadStatistics()
    for chunk in data.split(37):
        acc.update(chunk)
    np.testing.assert_allclose(acc.std().numpy(), data.numpy().std(0), rtol=1e-6)


def test_accumulator_errors_and_json():
    acc = vitlens.HeadStatistics()
    with pytest.raises(ValueError, match="no values"):
        acc.mean
    with pytest.raises(ValueError, match=r"\[B, L, H\]"):
        acc.update(torch.zeros(3, 4))
    acc.update(torch.ones(2, 2, 3))
    with pytest.raises(ValueError, match="do not match"):
        acc.update(torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="ok has 1"):
        acc.update(torch.ones(2, 2, 3), ok=[True])
    acc.layers = [0, 1]
    d = acc.to_dict()
    assert d["images"] == {"ok": 2, "failed": 0}
    assert [row["layer"] for row in d["layers"]] == [0, 1]
    assert d["layers"][0]["heads"]["mean"] == [1.0, 1.0, 1.0] and d["layers"][0]["std"] == 0.0


def test_head_statistics_over_batches_equals_one_capture():
    model, _ = make_model("deit_distilled")
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    seen = []
    stats = vitlens.head_statistics(model, x, batch_size=2, layers=[0, 2], progress=seen.append)
    assert seen == [2, 2, 1]
    with torch.no_grad(), vitlens.capture(model, layers=[0, 2]) as cache:
        model(x)
    d = vitlens.mean_attention_distance(cache).double().numpy()
    e = vitlens.attention_entropy(cache).double().numpy()
    np.testing.assert_allclose(stats["distance"].mean.numpy(), d.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["distance"].std().numpy(), d.std(0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(stats["entropy"].mean.numpy(), e.mean(0), rtol=1e-5)
    s = stats["distance"]
    assert s.layers == [0, 2] and s.unit == "pixels" and s.images == 5
    assert s.params["prefix_tokens"] == ["cls", "dist"] and s.params["patch_size"] == [16, 16]

    # ImageBatch-like items: rows with ok=False are skipped and counted
    class Batch:
        def __init__(self, images, ok):
            self.images, self.ok = images, ok

    items = [Batch(x[:3], torch.tensor([True, False, True])), Batch(x[3:], torch.tensor([False, False]))]
    st = vitlens.head_statistics(model, items, statistics=["distance"], layers=[0, 2])["distance"]
    assert (st.images, st.failed) == (2, 3)
    np.testing.assert_allclose(st.mean.numpy(), d[[0, 2]].mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown statistics"):
        vitlens.head_statistics(model, x, statistics=["nope"])
    with pytest.raises(TypeError, match="image tensors"):
        vitlens.head_statistics(model, ["a.jpg"])


# ------------------------------------------------------------------ figure
def _dots(ax):
    pts = []
    for line in ax.lines:
        if line.get_marker() == "o":
            pts += list(zip(line.get_xdata(), line.get_ydata()))
    return sorted((float(x), float(y)) for x, y in pts)


def test_distance_vs_depth_one_dot_per_head_and_layer(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from vitlens.export.figures import distance_vs_depth, save_figure

    g = torch.Generator().manual_seed(0)
    values = 20 + 5 * torch.rand(6, 3, 4, generator=g)
    acc = vitlens.HeadStatistics(layers=[1, 4, 7])
    acc.update(values)
    fig = distance_vs_depth(acc, title="demo", dodge=0)
    ax = fig.axes[0]
    mean = values.double().mean(0).numpy()
    expected = sorted((float(x), float(mean[i, h])) for i, x in enumerate([1, 4, 7]) for h in range(4))
    np.testing.assert_allclose(np.array(_dots(ax)), np.array(expected), rtol=1e-6)
    # by default the heads of a layer sit side by side (error bars apart), centred on the layer
    dodged = distance_vs_depth(acc).axes[0]
    xs = [[float(v) for v in line.get_xdata()] for line in dodged.lines if line.get_marker() == "o"]
    assert [round(row[0] - 1, 6) for row in xs] == [-0.2, round(-0.2 + 0.4 / 3, 6), round(0.2 - 0.4 / 3, 6), 0.2]
    assert all(row[1] - row[0] == pytest.approx(3) for row in xs)
    assert [t for t in dodged.get_xticks()] == [1, 4, 7]
    assert len(ax.containers) == 4                                  # one errorbar container per head
    seg = ax.containers[0].lines[2][0].get_segments()[0]            # head 0, layer 1: mean ± std
    sd = values.double().std(0, unbiased=False).numpy()
    assert seg[0][1] == pytest.approx(mean[0, 0] - sd[0, 0]) and seg[1][1] == pytest.approx(mean[0, 0] + sd[0, 0])
    assert "pixels" in ax.get_ylabel() and ax.get_xlabel() == "layer"
    save_figure(fig, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000

    # per-image [B, L, H] tensor, on a given axes, with NaN heads (Swin-like) skipped
    values[:, 0, 3] = float("nan")
    host = Figure()
    ax2 = host.add_subplot()
    assert distance_vs_depth(values, ax=ax2, error_bars=False) is host
    assert len(_dots(ax2)) == 11 and not ax2.containers
    with pytest.raises(ValueError, match="layers"):
        distance_vs_depth(values, layers=[0, 1])
    with pytest.raises(ValueError, match=r"\[L, H\]"):
        distance_vs_depth(torch.zeros(4))
