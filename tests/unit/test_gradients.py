"""Pure pieces of the gradient methods against slow direct implementations (explicit loops, float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitlens.analysis.gradients import (chefer_map, grad_rollout_map, pool_to_patches, preserved_model_state,
                                        reduce_pixels, resolve_target, weighted_attention)
from vitlens.capture.cache import TokenLayout


def layout(prefix: tuple[str, ...], grid=(2, 3), patch=(2, 2)) -> TokenLayout:
    return TokenLayout(len(prefix), prefix, grid, patch, (grid[0] * patch[0], grid[1] * patch[1]))


def synthetic(B=2, H=3, T=8, L=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    attns = [torch.softmax(2 * torch.randn(B, H, T, T, generator=g), -1) for _ in range(L)]
    grads = [torch.randn(B, H, T, T, generator=g) for _ in range(L)]
    return attns, grads


def ref_weighted(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """One image, one layer: [H, T, T] -> mean over heads of max(0, g*a), by loops."""
    H, T, _ = a.shape
    out = np.zeros((T, T))
    for i in range(T):
        for j in range(T):
            out[i, j] = sum(max(0.0, g[h, i, j] * a[h, i, j]) for h in range(H)) / H
    return out


def ref_map(R: np.ndarray, cls, P, grid, renorm):
    m = R[cls, P:] if cls is not None else R[P:, P:].mean(axis=0)
    return (m / m.sum() if renorm else m).reshape(grid)


def ref_grad_rollout(attns, grads, cls, P, grid):
    T = attns[0].shape[-1]
    R = np.eye(T)
    for a, g in zip(attns, grads):
        w = 0.5 * ref_weighted(a, g) + 0.5 * np.eye(T)
        w = np.stack([row / row.sum() for row in w])
        R = w @ R
    return ref_map(R, cls, P, grid, True)


def ref_chefer(attns, grads, cls, P, grid):
    T = attns[0].shape[-1]
    R = np.eye(T)
    for a, g in zip(attns, grads):
        R = R + ref_weighted(a, g) @ R
    return ref_map(R, cls, P, grid, False)


def test_weighted_attention_clamps_per_head_before_the_mean():
    a = torch.full((1, 2, 1, 1), 0.5)
    g = torch.tensor([2.0, -2.0]).reshape(1, 2, 1, 1)
    # per head: (1.0)+ and (-1.0)+ = 1, 0 -> mean 0.5; clamping after the mean would give 0
    assert weighted_attention(a, g).item() == pytest.approx(0.5)
    attns, grads = synthetic()
    np.testing.assert_allclose(weighted_attention(attns[0], grads[0])[1].numpy(),
                               ref_weighted(attns[0][1].double().numpy(), grads[0][1].double().numpy()),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prefix", [("cls",), ("cls", "dist"), ("cls", "reg", "reg"), ()])
@pytest.mark.parametrize("which", ["grad-rollout", "chefer"])
def test_formulas_against_loops(prefix, which):
    lay = layout(prefix)
    attns, grads = synthetic(T=lay.num_tokens)
    fn, ref = (grad_rollout_map, ref_grad_rollout) if which == "grad-rollout" else (chefer_map, ref_chefer)
    got = fn(attns, grads, lay)
    assert got.shape == (2, 2, 3) and got.dtype == torch.float32
    for b in range(2):
        want = ref([a[b].double().numpy() for a in attns], [g[b].double().numpy() for g in grads],
                   lay.cls_index, lay.num_prefix_tokens, lay.grid_size)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-4, atol=1e-7)
    if which == "grad-rollout":
        torch.testing.assert_close(got.sum((1, 2)), torch.ones(2))


def test_layer_order_matters():
    """Pairing A_l with the gradient of another layer (vit-explain's bug) gives another map."""
    lay = layout(("cls",))
    attns, grads = synthetic(T=lay.num_tokens)
    right = grad_rollout_map(attns, grads, lay)
    swapped = grad_rollout_map(attns, grads[::-1], lay)
    assert not torch.allclose(right, swapped, atol=1e-4)


def test_zero_gradients():
    lay = layout(("cls",))
    attns, grads = synthetic(T=lay.num_tokens)
    zeros = [torch.zeros_like(g) for g in grads]
    # no relevance flows: chefer keeps R = I (CLS row is 0 on the patches) ...
    assert torch.equal(chefer_map(attns, zeros, lay), torch.zeros(2, 2, 3))
    # ... and grad-rollout's map is all 0 rather than NaN
    assert torch.equal(grad_rollout_map(attns, zeros, lay), torch.zeros(2, 2, 3))


# ----------------------------------------------------------------------- pooling
def ref_pool(a: np.ndarray, grid, patch, absolute: bool) -> np.ndarray:
    """One image [C, H, W] -> [gh, gw] by loops over every pixel."""
    (gh, gw), (ph, pw) = grid, patch
    out = np.zeros((gh, gw))
    C, H, W = a.shape
    for ch in range(C):
        for y in range(min(H, gh * ph)):
            for x in range(min(W, gw * pw)):
                v = a[ch, y, x]
                out[y // ph, x // pw] += abs(v) if absolute else v
    return out


@pytest.mark.parametrize("pool", ["sum", "abs"])
@pytest.mark.parametrize("hw", [(4, 6), (5, 7), (3, 5)], ids=["exact", "cut-off", "padded"])
def test_pool_to_patches(pool, hw):
    lay = layout(("cls",))  # grid 2x3, patch 2x2: covers 4x6 pixels
    attr = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    got = pool_to_patches(attr, lay, pool)
    for b in range(2):
        np.testing.assert_allclose(got[b].numpy(), ref_pool(attr[b].double().numpy(), (2, 3), (2, 2), pool == "abs"),
                                   rtol=1e-5, atol=1e-6)
    # the channel-reduced pixel map pools to the same patches
    torch.testing.assert_close(pool_to_patches(reduce_pixels(attr, pool), lay, "sum"), got)
    if hw == (4, 6) and pool == "sum":
        torch.testing.assert_close(got.sum((1, 2)), attr.sum((1, 2, 3)))


def test_pool_rejects_unknown():
    with pytest.raises(ValueError, match="sum"):
        pool_to_patches(torch.zeros(1, 3, 4, 6), layout(("cls",)), "mean")


# ----------------------------------------------------------------------- targets
def test_resolve_target():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert resolve_target(None, logits).tolist() == [1, 0]
    assert resolve_target(2, logits).tolist() == [2, 2]
    assert resolve_target([0, 2], logits).tolist() == [0, 2]
    assert resolve_target(torch.tensor([2, 1]), logits).dtype == torch.long
    assert resolve_target(np.int64(1), logits).tolist() == [1, 1]
    with pytest.raises(ValueError, match="0..2"):
        resolve_target(3, logits)


# ------------------------------------------------------------------ model state
def test_preserved_model_state_restores_after_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    model[0].bias.requires_grad_(False)
    old_grad = torch.ones(2, 2)
    model[0].weight.grad = old_grad
    with pytest.raises(RuntimeError, match="inside"):
        with preserved_model_state(model):
            assert not model.training and not model[1].training
            model[0].weight.requires_grad_(False)
            model[0].bias.requires_grad_(True)
            model[0].weight.grad = torch.zeros(2, 2)
            model[0].bias.grad = torch.zeros(2)
            raise RuntimeError("inside")
    assert model.training and model[1].training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert model[0].weight.grad is old_grad and model[0].bias.grad is None
