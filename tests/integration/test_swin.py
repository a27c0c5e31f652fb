"""Swin / SwinV2 capture contract: windowed probabilities equal an independent recomputation
(relative position bias, cosine attention, shift mask), outputs unchanged, hooks and flags
restored; the geometry (layer numbering, window layouts, dense placement) and the analyses
(rollout through stages and merges, attention received) against slow explicit references."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlens
from vitlens.errors import UnsupportedModelError

from .test_capture import assert_cleanup_after_exceptions, hook_state

TINY = dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=10)
V1, V2, CR = "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "swinv2_cr_tiny_224"

#: name -> (timm model, extra kwargs, input (H, W))
CASES = {
    "swin": (V1, {}, (224, 224)),                                   # 56/28/14/7, window 7
    "swin_small": (V1, dict(img_size=64, window_size=4), (64, 64)),  # window clamped to 2 in stage 3
    "swin_pad": (V1, dict(img_size=(56, 40), window_size=4), (56, 40)),  # 14x10 padded, odd merges
    "swinv2": (V2, {}, (256, 256)),
    "swinv2_pad": (V2, dict(img_size=(52, 36), window_size=4), (52, 36)),  # 13x9: shift + padding quirk
    "swin_dynamic": (V1, dict(img_size=64, window_size=4, dynamic_img_size=True), (72, 56)),  # masks per forward
    "swinv2cr_pad": (CR, dict(img_size=(52, 36), window_size=4), (52, 36)),  # SwinV2-CR: 13x9, shift + padding
}


def make_swin(case: str, batch: int = 2) -> tuple[torch.nn.Module, torch.Tensor]:
    """Tiny random-init model with non-trivial attention (sharpened q/k, random biases)."""
    import timm

    name, kwargs, (h, w) = CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **TINY, **kwargs).eval()
    with torch.no_grad():
        for blk in blocks_of(model):
            attn = blk.attn
            if hasattr(attn, "relative_position_bias_table"):   # V1
                attn.qkv.weight.mul_(4.0)
                attn.relative_position_bias_table.normal_(0, 1.0)
            elif hasattr(attn, "meta_mlp"):                      # V2-CR: undo the zero init of the branch norms
                blk.norm1.weight.fill_(1.0)
                blk.norm2.weight.fill_(1.0)
                attn.logit_scale.uniform_(1.0, 4.5)
                attn.meta_mlp.fc2.weight.normal_(0, 0.5)
            else:                                                # V2: undo the res-post-norm zero init
                blk.norm1.weight.fill_(1.0)
                blk.norm2.weight.fill_(1.0)
                attn.logit_scale.uniform_(1.0, 4.5)
                attn.q_bias.normal_(0, 0.5)
                attn.v_bias.normal_(0, 0.5)
                attn.cpb_mlp[2].weight.normal_(0, 0.5)
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(1))
    return model, x


def blocks_of(model):
    stages = model.layers if hasattr(model, "layers") else model.stages  # SwinV2-CR: model.stages
    return [b for st in stages for b in st.blocks]


# ------------------------------------------------------------------ references
def reference_windows(model, x):
    """Per block: softmax probabilities recomputed in float64 from the block's real input.

    LayerNorm (V1: norm1 first; V2: post-norm, none), cyclic shift, padding and window
    partition written out here; V1 logits ``q·kᵀ·d^-½ + B[Δy, Δx]`` from the bias table,
    V2 ``cos(q, k)·exp(min(logit_scale, ln 100)) + 16·σ(cpb_mlp(log-spaced Δ))``; plus the
    block's shift mask. Checks that ``A @ v`` projected reproduces the module's output, so
    these are the probabilities the model used. Returns ``[B, nW, heads, n, n]`` per layer
    and the shift mask each block used (its buffer, or built for this input when dynamic).
    """
    blocks = blocks_of(model)
    inputs, outputs, hs = {}, {}, []
    for i, blk in enumerate(blocks):
        hs.append(blk.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach())))
        hs.append(blk.attn.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o.detach())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hs:
            h.remove()
    ref, masks = {}, {}
    for i, blk in enumerate(blocks):
        v2 = not hasattr(blk.attn, "relative_position_bias_table")
        attn = copy.deepcopy(blk.attn).double()
        xin = inputs[i].double()
        if not v2:
            xin = copy.deepcopy(blk.norm1).double()(xin)
        B, H, W, C = xin.shape
        (wh, ww), (sh, sw) = blk.window_size, blk.shift_size
        if sh or sw:
            xin = torch.roll(xin, shifts=(-sh, -sw), dims=(1, 2))
        hp, wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
        xin = F.pad(xin, (0, 0, 0, wp - W, 0, hp - H))
        masks[i] = blk.get_attn_mask(xin.float()) if blk.dynamic_mask else blk.attn_mask
        nw, n = (hp // wh) * (wp // ww), wh * ww
        xw = xin.reshape(B, hp // wh, wh, wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nw, n, C)
        heads = attn.num_heads
        if v2:
            bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
            q, k, v = F.linear(xw, attn.qkv.weight, bias).reshape(B * nw, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
            logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
            logits = logits * torch.clamp(attn.logit_scale, max=math.log(100)).exp()
            dy = torch.arange(-(wh - 1), wh, dtype=torch.float64) / max(wh - 1, 1) * 8
            dx = torch.arange(-(ww - 1), ww, dtype=torch.float64) / max(ww - 1, 1) * 8
            coords = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1)
            coords = torch.sign(coords) * torch.log2(coords.abs() + 1) / math.log2(8)
            table = 16 * torch.sigmoid(attn.cpb_mlp(coords))            # [2wh-1, 2ww-1, heads]
        else:
            q, k, v = attn.qkv(xw).reshape(B * nw, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
            logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
            table = attn.relative_position_bias_table.reshape(2 * wh - 1, 2 * ww - 1, heads)
        pos = torch.tensor([(p // ww, p % ww) for p in range(n)])
        rel = pos[:, None, :] - pos[None, :, :]
        logits = logits + table[rel[..., 0] + wh - 1, rel[..., 1] + ww - 1].permute(2, 0, 1)
        if masks[i] is not None:
            logits = (logits.reshape(B, nw, heads, n, n) + masks[i].double()[None, :, None]).reshape(-1, heads, n, n)
        a = logits.softmax(-1)
        y = attn.proj((a @ v).transpose(1, 2).reshape(B * nw, n, -1))
        torch.testing.assert_close(y.float(), outputs[i], atol=2e-4, rtol=1e-3)
        ref[i] = a.reshape(B, nw, heads, n, n)
    return ref, masks


def window_tokens(grid, window, shift):
    """By explicit loops: per window, [(position in window, stage token)] of its real tokens."""
    (H, W), (wh, ww), (sh, sw) = grid, window, shift
    n_row, n_col = math.ceil(H / wh), math.ceil(W / ww)
    out = []
    for w in range(n_row * n_col):
        wr, wc = divmod(w, n_col)
        toks = []
        for p in range(wh * ww):
            i, j = divmod(p, ww)
            ys, xs = wr * wh + i, wc * ww + j            # shifted, padded coordinates
            if ys < H and xs < W:                        # else padding
                y, x = (ys + sh) % H, (xs + sw) % W      # undo the cyclic shift
                toks.append((p, y * W + x))
        out.append(toks)
    return out


def dense_reference(win: torch.Tensor, grid, window, shift) -> torch.Tensor:
    """[B, nW, H, n, n] -> [B, H, N, N] by looping over windows and un-shifted coordinates."""
    B, _, heads, _, _ = win.shape
    N = grid[0] * grid[1]
    out = torch.zeros(B, heads, N, N, dtype=win.dtype)
    for w, toks in enumerate(window_tokens(grid, window, shift)):
        pos = [p for p, _ in toks]
        tks = [t for _, t in toks]
        for pq, tq in toks:
            out[:, :, tq, tks] = win[:, w, :, pq, pos]
    return out


def allowed_reference(blk, grid) -> np.ndarray:
    """[N, N] bool: same window, both real, and timm's shift mask lets them attend."""
    N = grid[0] * grid[1]
    ok = np.zeros((N, N), dtype=bool)
    mask = blk.attn_mask
    for w, toks in enumerate(window_tokens(grid, blk.window_size, blk.shift_size)):
        for pq, tq in toks:
            for pk, tk in toks:
                ok[tq, tk] = mask is None or mask[w, pq, pk] == 0
    return ok


def merge_matrix(prev, grid) -> np.ndarray:
    """[N_next, N_prev]: each stage-(s+1) row averages the stage-s tokens of its 2x2 group."""
    M = np.zeros((grid[0] * grid[1], prev[0] * prev[1]))
    for r in range(grid[0]):
        for c in range(grid[1]):
            group = [(2 * r + a) * prev[1] + 2 * c + b for a in (0, 1) for b in (0, 1)
                     if 2 * r + a < prev[0] and 2 * c + b < prev[1]]
            for t in group:
                M[r * grid[1] + c, t] = 1.0 / len(group)
    return M


def rollout_reference(dense, allowed, layouts, fuse, discard, b) -> np.ndarray:
    """One image: explicit per-stage products of dense Â, merges between stages, mean over output rows."""
    total, prev_grid = None, None
    stages = sorted({wl.stage for wl in layouts})
    for s in stages:
        members = [wl for wl in layouts if wl.stage == s]
        grid = members[0].grid_size
        N = grid[0] * grid[1]
        R = np.eye(N)
        for wl in members:
            A = fuse(dense[wl.layer][b].double().numpy(), axis=0) * allowed[wl.layer]
            if discard > 0:
                cand = sorted((A[i, j], i, j) for i, j in zip(*np.nonzero(allowed[wl.layer])))
                for _, i, j in cand[: int(discard * len(cand))]:
                    A[i, j] = 0.0
            Ah = 0.5 * A + 0.5 * np.eye(N)
            R = (Ah / Ah.sum(1, keepdims=True)) @ R
        total = R if total is None else R @ merge_matrix(prev_grid, grid) @ total
        prev_grid = grid
    m = total.mean(0)
    return (m / m.sum()).reshape(layouts[0].grid_size)


# ------------------------------------------------------------------ capture
@pytest.mark.parametrize("case", ["swin", "swin_pad", "swinv2", "swinv2_pad", "swin_dynamic"])
def test_probabilities_match_independent_recomputation(case):
    model, x = make_swin(case)
    ref, masks = reference_windows(model, x)
    with vitlens.capture(model) as cache:
        model(x)
    blocks = blocks_of(model)
    assert cache.layers == list(range(len(blocks))) and cache.family == ("SwinV2" if "v2" in case else "Swin")
    for layer, a in ref.items():
        got = cache.attention(layer)
        wl = cache.layout_of(layer)
        assert got.shape == a.shape == (2, wl.num_windows, blocks[layer].attn.num_heads,
                                        wl.window_area, wl.window_area)
        torch.testing.assert_close(got.double(), a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5, rtol=0)
        mask = masks[layer]
        if mask is not None:  # masked (cross-region) pairs are exactly 0, the others positive
            masked = (mask != 0)[None, :, None].expand_as(got)
            assert masked.any() and (got[masked] == 0).all() and (got[~masked] > 0).all()
            # the geometry vitlens uses (rollout, analyses) is timm's mask
            real = wl.token_index() >= 0
            pairs = real[:, :, None] & real[:, None, :]
            assert torch.equal(wl.allowed_pairs()[pairs], (mask == 0)[pairs])
    assert cache.attention(0).std() > 1e-2  # not uniform: a wrong order would be noticed


def test_outputs_unchanged_hooks_and_flags_restored():
    model, x = make_swin("swin_small")
    blocks = blocks_of(model)
    assert not any(b.attn.fused_attn for b in blocks)  # timm's default for Swin
    before = hook_state(model)
    with torch.no_grad():
        plain = model(x)
        with vitlens.capture(model) as cache:
            inside = model(x)
        after = model(x)
    assert torch.equal(plain, inside) and torch.equal(plain, after)
    assert hook_state(model) == before

    # a user-enabled fused kernel is switched off inside the block only, then restored
    for i in (0, 3, 5):
        blocks[i].attn.fused_attn = True
    with torch.no_grad():
        fused = model(x)
    before = hook_state(model)
    with vitlens.capture(model, layers=[0, 1, 3]) as part:
        assert [b.attn.fused_attn for b in blocks] == [False] * 5 + [True, False, False]
        with torch.no_grad():
            inside = model(x)
    torch.testing.assert_close(inside, fused, atol=1e-5, rtol=1e-4)
    assert hook_state(model) == before
    assert [b.attn.fused_attn for b in blocks] == [True, False, False, True, False, True, False, False]
    for layer in part.layers:
        torch.testing.assert_close(part.attention(layer), cache.attention(layer), atol=1e-5, rtol=1e-4)

    v2, x2 = make_swin("swinv2_pad")
    before = hook_state(v2)
    with torch.no_grad():
        plain = v2(x2)
        with vitlens.capture(v2):
            inside = v2(x2)
    assert torch.equal(plain, inside) and hook_state(v2) == before


@pytest.mark.parametrize("grad", [False, True])
def test_cleanup_after_exception_in_body_and_in_forward(grad):
    model, x = make_swin("swin_small")
    blocks = blocks_of(model)
    blocks[2].attn.fused_attn = True
    assert_cleanup_after_exceptions(model, x, [1, 2, 6], model.layers[1].blocks[1], grad)
    assert blocks[2].attn.fused_attn is True and not blocks[1].attn.fused_attn


def test_grad_mode_records_the_tensor_multiplied_with_v():
    model, x = make_swin("swin_small")
    with vitlens.capture(model, grad=True) as cache:
        logits = model(x)
    a = cache.attention(1)
    assert a.requires_grad and a.shape == (2, 16, 1, 16, 16)
    (g,) = torch.autograd.grad(logits[:, 0].sum(), a)
    assert g.abs().sum() > 0
    with vitlens.capture(model) as plain:
        model(x)
    torch.testing.assert_close(a.detach(), plain.attention(1), atol=1e-6, rtol=0)


def test_layer_numbering_and_layouts():
    model, x = make_swin("swin")
    with vitlens.capture(model, layers=[-1]) as cache:
        model(x)
    assert cache.num_layers == 8 and cache.layers == [7] and cache.layer_heads == (1, 1, 2, 2, 2, 2, 4, 4)
    assert cache.hook_points == {7: "layers.3.blocks.1.attn"}
    lay = cache.layout
    assert (lay.num_prefix_tokens, lay.prefix_names, lay.grid_size, lay.patch_size, lay.input_size) == \
        (0, (), (56, 56), (4, 4), (224, 224))
    expected = [  # stage, grid, window, shift, windows, patch
        (0, (56, 56), (7, 7), (0, 0), 64, (4, 4)), (0, (56, 56), (7, 7), (3, 3), 64, (4, 4)),
        (1, (28, 28), (7, 7), (0, 0), 16, (8, 8)), (1, (28, 28), (7, 7), (3, 3), 16, (8, 8)),
        (2, (14, 14), (7, 7), (0, 0), 4, (16, 16)), (2, (14, 14), (7, 7), (3, 3), 4, (16, 16)),
        (3, (7, 7), (7, 7), (0, 0), 1, (32, 32)), (3, (7, 7), (7, 7), (0, 0), 1, (32, 32)),  # grid == window: no shift
    ]
    got = [cache.layout_of(i) for i in range(8)]
    assert [(w.stage, w.grid_size, w.window_size, w.shift_size, w.num_windows, w.patch_size) for w in got] == expected
    assert [w.layer for w in got] == list(range(8)) and cache.layout_of(-1) == got[7]
    assert cache.attention(-1).shape == (2, 1, 4, 49, 49)

    # padding and clamping: every layout value against what each block really does
    model, x = make_swin("swin_pad")
    grids = {}
    hs = [b.register_forward_pre_hook(lambda m, a, i=i: grids.__setitem__(i, tuple(a[0].shape[1:3])))
          for i, b in enumerate(blocks_of(model))]
    with vitlens.capture(model) as cache:
        model(x)
    for h in hs:
        h.remove()
    assert [(w.stage, w.grid_size, w.window_size, w.shift_size, w.num_windows, w.padded_size)
            for w in map(cache.layout_of, range(8))] == [
        (0, (14, 10), (4, 4), (0, 0), 12, (16, 12)), (0, (14, 10), (4, 4), (2, 2), 12, (16, 12)),
        (1, (7, 5), (4, 4), (0, 0), 4, (8, 8)), (1, (7, 5), (4, 4), (2, 2), 4, (8, 8)),
        (2, (4, 3), (4, 3), (0, 0), 1, (4, 3)), (2, (4, 3), (4, 3), (0, 0), 1, (4, 3)),
        (3, (2, 2), (2, 2), (0, 0), 1, (2, 2)), (3, (2, 2), (2, 2), (0, 0), 1, (2, 2))]
    for i, blk in enumerate(blocks_of(model)):
        wl = cache.layout_of(i)
        assert wl.grid_size == grids[i] and wl.window_size == tuple(blk.window_size)
        assert wl.shift_size == tuple(blk.shift_size)
        assert cache.attention(i).shape[1] == wl.num_windows


def test_heads_layers_selection_and_errors():
    model, x = make_swin("swin_small")
    with vitlens.capture(model) as full:
        model(x)
    with vitlens.capture(model, layers=[2, 7], heads=[0], dtype=torch.float16) as part:
        model(x)
    for layer in (2, 7):
        got = part.attention(layer)
        assert got.dtype == torch.float16 and got.shape[2] == 1
        torch.testing.assert_close(got.float(), full.attention(layer)[:, :, [0]], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match=r"head 1 is out of range.*as few as 1 heads"):
        with vitlens.capture(model, heads=[1]):
            pass
    with vitlens.capture(model, layers=[2, 7], heads=[1]) as ok:  # stages 1 and 3 have >= 2 heads
        model(x)
    torch.testing.assert_close(ok.attention(7), full.attention(7)[:, :, [1]])
    with pytest.raises(ValueError, match="every layer"):
        vitlens.rollout(part)
    with pytest.raises(ValueError, match="no prefix tokens"):
        with vitlens.capture(model, rows="prefix"):
            pass
    with pytest.raises(ValueError, match="no CLS token"):
        vitlens.cls_attention(full)
    # batches accumulate over forward calls
    with vitlens.capture(model, layers=[3]) as two:
        model(x[:1])
        model(x[1:])
    torch.testing.assert_close(two.attention(3), full.attention(3))


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("case,layers", [("swin", [3, 5, 6]), ("swin_small", None), ("swin_pad", None),
                                         ("swinv2_pad", None), ("swinv2cr_pad", None)])
def test_dense_attention_matches_loop_reference(case, layers):
    model, x = make_swin(case)
    with vitlens.capture(model, layers=layers) as cache:
        model(x)
    H_img, W_img = x.shape[-2:]
    for layer in cache.layers:
        wl = cache.layout_of(layer)
        dense = cache.dense_attention(layer)
        N = wl.num_tokens
        assert dense.shape == (2, cache.attention(layer).shape[2], N, N)
        ref = dense_reference(cache.attention(layer), wl.grid_size, wl.window_size, wl.shift_size)
        assert torch.equal(dense, ref)
        # rows sum to 1 unless the query's window holds padding
        pad_free = wl.padded_size == wl.grid_size
        if pad_free:
            torch.testing.assert_close(dense.sum(-1), torch.ones(dense.shape[:-1]), atol=1e-5, rtol=0)
            # Liu et al. 2021: the shifted partition is the regular one displaced by the shift;
            # nonzero exactly where both tokens fall in one displaced window
            (gh, gw), (wh, ww), (sh, sw) = wl.grid_size, wl.window_size, wl.shift_size
            ys, xs = torch.arange(N) // gw, torch.arange(N) % gw
            wy, wx = (ys - sh).div(wh, rounding_mode="floor"), (xs - sw).div(ww, rounding_mode="floor")
            same = (wy[:, None] == wy[None, :]) & (wx[:, None] == wx[None, :])
            assert torch.equal(dense.amin(dim=(0, 1)) > 0, same)
        else:
            assert (dense.sum(-1) <= 1 + 1e-5).all()
        # effective patch size times stage grid covers the input
        assert wl.patch_size[0] * wl.grid_size[0] >= H_img and wl.patch_size[1] * wl.grid_size[1] >= W_img


# ------------------------------------------------------------------ analyses
@pytest.mark.parametrize("case", ["swin_small", "swin_pad", "swinv2_pad", "swinv2cr_pad"])
def test_rollout_matches_stagewise_reference(case):
    model, x = make_swin(case)
    with vitlens.capture(model) as cache:
        model(x)
    blocks = blocks_of(model)
    layouts = [cache.layout_of(i) for i in cache.layers]
    dense = {wl.layer: dense_reference(cache.attention(wl.layer), wl.grid_size, wl.window_size, wl.shift_size)
             for wl in layouts}
    allowed = {wl.layer: allowed_reference(blocks[wl.layer], wl.grid_size) for wl in layouts}
    settings = [("mean", np.mean, 0.0), ("max", np.max, 0.0), ("mean", np.mean, 0.6)]
    for fusion, fuse, discard in settings:
        got = vitlens.rollout(cache, head=fusion, discard_ratio=discard)
        assert got.shape == (2, *cache.layout.grid_size) and got.dtype == torch.float32
        torch.testing.assert_close(got.sum((-1, -2)), torch.ones(2))
        for b in range(2):
            ref = rollout_reference(dense, allowed, layouts, fuse, discard, b)
            np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(vitlens.rollout(cache), vitlens.rollout(cache, discard_ratio=0.6))
    res = vitlens.explain(model, x, method="rollout", details=True)
    torch.testing.assert_close(res.maps, vitlens.rollout(cache))


def test_attention_received_vit_and_swin():
    from ..conftest import make_model

    vit, xv = make_model("deit_distilled")
    with vitlens.capture(vit) as cache:
        vit(xv)
    lay = cache.layout
    for layer in (0, -1):
        a = cache.attention(layer).double()
        B, H, T, _ = a.shape
        ref = torch.zeros(B, *lay.grid_size, dtype=torch.float64)
        for b in range(B):
            for k in range(lay.num_patches):
                ref[b, k // lay.grid_size[1], k % lay.grid_size[1]] = a[b, :, :, lay.num_prefix_tokens + k].mean()
        got = vitlens.attention_received(cache, layer)
        assert got.shape == (B, *lay.grid_size)
        torch.testing.assert_close(got.double(), ref, atol=1e-7, rtol=1e-5)
        per_head = vitlens.attention_received(cache, layer, head=None)
        torch.testing.assert_close(per_head.mean(1), got)
        torch.testing.assert_close(vitlens.attention_received(cache, layer, head=2), per_head[:, 2])
    with vitlens.capture(vit, rows="prefix") as rows:
        vit(xv)
    with pytest.raises(ValueError, match="rows='all'"):
        vitlens.attention_received(rows)

    for case in ("swin_small", "swin_pad"):
        model, x = make_swin(case)
        with vitlens.capture(model) as cache:
            model(x)
        for layer in range(cache.num_layers):
            wl = cache.layout_of(layer)
            dense = dense_reference(cache.attention(layer), wl.grid_size, wl.window_size, wl.shift_size).double()
            ref = torch.zeros(2, dense.shape[1], wl.num_tokens, dtype=torch.float64)
            for toks in window_tokens(wl.grid_size, wl.window_size, wl.shift_size):
                queries = [t for _, t in toks]
                for _, k in toks:
                    ref[:, :, k] = dense[:, :, queries, k].mean(-1)
            got = vitlens.attention_received(cache, layer, head=None)
            assert got.shape == (2, dense.shape[1], *wl.grid_size)
            torch.testing.assert_close(got.double().flatten(2), ref, atol=1e-7, rtol=1e-5)
            torch.testing.assert_close(vitlens.attention_received(cache, layer), got.mean(1))
        # uniform attention inside every window gives the flat level 1/n, padding included
        uniform = cache.attention(0).clone().fill_(1.0 / cache.layout_of(0).window_area)
        cache._store[0] = [uniform]
        torch.testing.assert_close(vitlens.attention_received(cache, 0),
                                   torch.full((2, *cache.layout_of(0).grid_size), 1.0 / cache.layout_of(0).window_area))


@pytest.mark.parametrize("name", ["convnext_atto"])
def test_unsupported_models_get_the_clear_error(name):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=10)
    with pytest.raises(UnsupportedModelError, match="Swin .*swin_tiny_patch4_window7_224") as e:
        with vitlens.capture(model):
            pass
    assert "SwinV2" in str(e.value) and type(model).__name__ in str(e.value)
    assert {"Swin", "SwinV2"} <= set(vitlens.supported_families())


def test_swinv2_cr_is_described_like_swin_and_feeds_distance_and_gradcam():
    """SwinV2-CR: NCHW patch embedding and stages, NHWC blocks; the same window layouts as Swin."""
    model, x = make_swin("swinv2cr_pad")
    with torch.no_grad(), vitlens.capture(model) as cache:
        y = model(x)
    assert torch.equal(y, model(x)) and cache.family == "SwinV2-CR"
    assert cache.layout.grid_size == (13, 9) and cache.layout.num_prefix_tokens == 0
    wl = [cache.layout_of(i) for i in cache.layers]
    assert [w.grid_size for w in wl[::2]] == [(13, 9), (7, 5), (4, 3), (2, 2)]
    assert wl[1].shift_size == (2, 2) and wl[1].num_windows == 12 and wl[5].window_size == (4, 3)
    assert cache.spec(1).hook_point == "stages.0.blocks.1.attn"
    d = vitlens.mean_attention_distance(cache)  # NaN marks heads a stage does not have (1, 2, 2, 4 heads)
    assert torch.isfinite(d[..., 0]).all() and torch.isnan(d[..., 0, 1]).all()
    res = vitlens.explain(model, x, method="gradcam", details=True)
    assert res.maps.shape[0] == 2 and torch.isfinite(res.maps).all()
