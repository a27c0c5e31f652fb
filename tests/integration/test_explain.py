"""``vitlens.explain``: every method against a slow, direct reference written here.

The references never call vitlens: :func:`manual_forward` re-implements a timm
VisionTransformer forward with the attention unfused by hand (checked to reproduce the
model's logits), and the formulas are evaluated per image with explicit loops.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitlens
from vitlens.analysis.explain import CLASS_AGNOSTIC, METHODS

from ..conftest import make_model


# ------------------------------------------------------------------ references
def manual_forward(model, x):
    """timm VisionTransformer forward written out, attention unfused by hand.

    Returns:
        logits ``[B, C]``, per-layer attention probabilities ``[B, H, T, T]`` (in the
        autograd graph), per-layer ``norm1`` outputs ``[B, T, D]`` (the last block's are
        the tokens Grad-CAM looks at).
    """
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    attns, feats = [], []
    for blk in model.blocks:
        h = blk.norm1(t)
        feats.append(h)
        at = blk.attn
        assert getattr(at, "gate", None) is None
        B, N, _ = h.shape
        qkv = at.qkv(h).reshape(B, N, 3, at.num_heads, at.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = at.q_norm(q), at.k_norm(k)
        a = torch.softmax((q * at.scale) @ k.transpose(-2, -1), dim=-1)
        attns.append(a)
        o = at.proj(at.norm((a @ v).transpose(1, 2).reshape(B, N, -1)))
        t = t + blk.ls1(o)
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
    return model.forward_head(model.norm(t)), attns, feats


def layout_of(model):
    names = (["cls"] if getattr(model, "cls_token", None) is not None else []) + \
        (["dist"] if getattr(model, "dist_token", None) is not None else [])
    n_reg = model.num_prefix_tokens - len(names)
    return len(names) + n_reg, (0 if names and names[0] == "cls" else None), tuple(model.patch_embed.grid_size)


def ref_rollout_one(attn: list[np.ndarray], cls, P, grid):
    """Abnar & Zuidema rollout of one image from [H, T, T] arrays, float64 loops."""
    T = attn[0].shape[-1]
    R = np.eye(T)
    for a in attn:
        fused = a.mean(axis=0)
        ahat = 0.5 * fused + 0.5 * np.eye(T)
        for i in range(T):
            ahat[i] /= ahat[i].sum()
        R = ahat @ R
    m = R[cls, P:] if cls is not None else R[P:, P:].mean(axis=0)
    return (m / m.sum()).reshape(grid)


def model_state(model):
    """Everything explain must leave as it found it."""
    def keys(d):
        return tuple(d.keys())
    return {
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grad": [(n, None if p.grad is None else (id(p.grad), p.grad.clone())) for n, p in model.named_parameters()],
        "hooks": [(n, keys(m._forward_hooks), keys(m._forward_pre_hooks), keys(m._backward_hooks),
                   keys(getattr(m, "_backward_pre_hooks", {})), keys(m._state_dict_hooks))
                  for n, m in model.named_modules()],
        "fused": [(n, m.fused_attn) for n, m in model.named_modules() if hasattr(m, "fused_attn")],
    }


def fast(method):
    """Options that keep a method cheap in tests (IG's integral with few points)."""
    return {"n_steps": 4} if method == "ig" else {}


def assert_same_state(before, after):
    for key in ("training", "requires_grad", "hooks", "fused"):
        assert before[key] == after[key], key
    for (n, a), (_, b) in zip(before["grad"], after["grad"]):
        if a is None:
            assert b is None, f"{n} has a leftover .grad"
        else:
            assert b is not None and a[0] == b[0] and torch.equal(a[1], b[1]), n


# ------------------------------------------------------------------- cls, rollout
@pytest.mark.parametrize("case", ["vit", "deit_distilled", "dinov2_reg4", "gap_no_cls"])
def test_rollout_against_manual_forward(case):
    model, x = make_model(case)
    P, cls, grid = layout_of(model)
    got = vitlens.explain(model, x, "rollout")
    assert got.shape == (2, *grid) and got.dtype == torch.float32
    with torch.no_grad():
        logits, attns, _ = manual_forward(model, x)
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
    for b in range(2):
        ref = ref_rollout_one([a[b].double().numpy() for a in attns], cls, P, grid)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", ["vit", "deit_distilled", "dinov2_reg4"])
def test_cls_against_manual_forward(case):
    model, x = make_model(case)
    P, cls, grid = layout_of(model)
    with torch.no_grad():
        _, attns, _ = manual_forward(model, x)
    for layer, head in [(-1, "mean"), (0, "max"), (1, 2)]:
        got = vitlens.explain(model, x, "cls", layer=layer, head=head)
        a = attns[layer].double().numpy()
        for b in range(2):
            row = a[b, :, cls, P:]
            ref = {"mean": row.mean(0), "max": row.max(0)}.get(head) if isinstance(head, str) else row[head]
            np.testing.assert_allclose(got[b].numpy(), ref.reshape(grid), rtol=1e-4, atol=1e-6)


def test_cls_without_cls_token_points_to_rollout():
    model, x = make_model("gap_no_cls")
    with pytest.raises(ValueError, match="rollout"):
        vitlens.explain(model, x, "cls")


def test_rollout_options_reach_the_map():
    model, x = make_model("vit")
    a = vitlens.explain(model, x, "rollout")
    b = vitlens.explain(model, x, "rollout", discard_ratio=0.5)
    c = vitlens.explain(model, x, "rollout", head="max")
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="per-head maps exist only"):
        vitlens.explain(model, x, "rollout", head=1)


# ------------------------------------------------------------------------ random
def test_random_is_seeded_uniform_noise():
    model, x = make_model("deit_distilled")
    a = vitlens.explain(model, x, "random", seed=3)
    assert a.shape == (2, 4, 4)
    assert torch.equal(a, vitlens.explain(model, x, "random", seed=3))
    assert not torch.equal(a, vitlens.explain(model, x, "random", seed=4))
    assert torch.equal(a, torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3)))
    assert float(a.min()) >= 0 and float(a.max()) < 1
    with pytest.raises(TypeError, match="seed"):
        vitlens.explain(model, x, "random", seed=1.5)


# --------------------------------------------------------------- interface checks
def test_unknown_method_lists_methods_and_suggests():
    model, x = make_model("vit")
    with pytest.raises(ValueError) as e:
        vitlens.explain(model, x, "rolout")
    msg = str(e.value)
    assert "'rolout'" in msg and "Did you mean 'rollout'" in msg
    for m in METHODS:
        assert m in msg


def test_unknown_option_names_the_allowed_ones():
    model, x = make_model("vit")
    with pytest.raises(TypeError, match="discard_ratio"):
        vitlens.explain(model, x, "rollout", layer=2)


def test_explanation_carries_logits_target_layout():
    model, x = make_model("vit")
    res = vitlens.explain(model, x, "cls", layer=1, details=True)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(res.logits, logits)
    assert torch.equal(res.target, logits.argmax(-1))
    assert res.layout.grid_size == (4, 4) and res.method == "cls" and res.options == {"layer": 1, "head": "mean"}
    assert torch.equal(vitlens.explain(model, x, "cls", target=[3, 4], details=True).target, torch.tensor([3, 4]))


@pytest.mark.parametrize("target, err, match", [
    (10, ValueError, "out of range"), (-1, ValueError, "out of range"), ([1, 2, 3], ValueError, "one class per image"),
    (1.5, TypeError, "target"), (torch.tensor([0.5, 1.0]), TypeError, "integer"), (True, TypeError, "target"),
])
def test_bad_targets(target, err, match):
    model, x = make_model("vit")
    with pytest.raises(err, match=match):
        vitlens.explain(model, x, "rollout", target=target)


def test_bad_images():
    model, x = make_model("vit")
    with pytest.raises(ValueError, match=r"images\[None\]"):
        vitlens.explain(model, x[0], "rollout")
    with pytest.raises(TypeError, match="tensor"):
        vitlens.explain(model, x.numpy(), "rollout")


def test_deprecated_entry_points_still_work_and_warn():
    model, x = make_model("vit")
    with pytest.warns(DeprecationWarning, match="details=True"):
        res = vitlens.attention_maps(model, x, method="cls", layer=-2, head=None)
    assert res.maps.shape == (2, 3, 4, 4) and res.layer == 1
    torch.testing.assert_close(res.maps.mean(1), vitlens.explain(model, x, "cls", layer=-2))
    with pytest.warns(DeprecationWarning, match="details=True"):
        old = vitlens.explanation(model, x, "cls", layer=-2)
    new = vitlens.explain(model, x, "cls", layer=-2, details=True)
    assert torch.equal(old.maps, new.maps) and old.options == new.options == {"layer": 1, "head": "mean"}


# ------------------------------------------------------------------- model state
@pytest.mark.parametrize("method", METHODS)
def test_model_state_restored_after_success(method):
    model, x = make_model("deit_distilled")
    model.train()
    model.blocks[0].eval()
    model.pos_embed.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    before = model_state(model)
    vitlens.explain(model, x, method, **fast(method))
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", METHODS)
def test_model_state_restored_after_an_exception(method):
    model, x = make_model("vit")

    def boom(*_):
        raise RuntimeError("injected failure")

    model.blocks[1].register_forward_hook(boom)
    before = model_state(model)
    with pytest.raises(RuntimeError, match="injected"):
        vitlens.explain(model, x, method, **fast(method))
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "random"])  # random: one generator per batch
def test_batched_equals_per_image(method):
    model, x = make_model("dinov2_reg4")
    both = vitlens.explain(model, x, method, target=[1, 7], **fast(method))
    for b, t in enumerate([1, 7]):
        one = vitlens.explain(model, x[b:b + 1], method, target=t, **fast(method))
        torch.testing.assert_close(both[b:b + 1], one, rtol=1e-4, atol=1e-6)


def test_class_agnostic_methods_ignore_target():
    model, x = make_model("vit")
    for method in CLASS_AGNOSTIC:
        torch.testing.assert_close(vitlens.explain(model, x, method, target=0),
                                   vitlens.explain(model, x, method, target=5))


def test_runs_under_no_grad_and_inference_mode():
    model, x = make_model("vit")
    ref = vitlens.explain(model, x, "rollout")
    with torch.no_grad():
        torch.testing.assert_close(vitlens.explain(model, x, "rollout"), ref)
    with torch.inference_mode():
        torch.testing.assert_close(vitlens.explain(model, x, "rollout"), ref)


# ------------------------------------------------------- gradient attention methods
def ref_attention_gradients(model, x, target):
    """Per image: manual forward, ∂ logit_t / ∂ A_l by torch.autograd, as float64 arrays."""
    out = []
    for b in range(x.shape[0]):
        logits, attns, _ = manual_forward(model, x[b:b + 1])
        grads = torch.autograd.grad(logits[0, target[b]], attns)
        out.append(([a[0].detach().double().numpy() for a in attns], [g[0].double().numpy() for g in grads]))
    return out


def ref_weighted(a, g):
    return np.maximum(g * a, 0).mean(axis=0)


def ref_grad_rollout(attns, grads, cls, P, grid):
    T = attns[0].shape[-1]
    R = np.eye(T)
    for a, g in zip(attns, grads):        # forward order, A_l with its own gradient
        w = 0.5 * ref_weighted(a, g) + 0.5 * np.eye(T)
        w = w / w.sum(axis=1, keepdims=True)
        R = w @ R
    m = R[cls, P:] if cls is not None else R[P:, P:].mean(axis=0)
    return (m / m.sum()).reshape(grid)


def ref_chefer(attns, grads, cls, P, grid):
    T = attns[0].shape[-1]
    R = np.eye(T)
    for a, g in zip(attns, grads):
        R = R + ref_weighted(a, g) @ R
    m = R[cls, P:] if cls is not None else R[P:, P:].mean(axis=0)
    return m.reshape(grid)


@pytest.mark.parametrize("case", ["vit", "vit_qk_norm", "deit_distilled", "dinov2_reg4", "gap_no_cls", "non_square"])
@pytest.mark.parametrize("method", ["grad-rollout", "chefer"])
def test_attention_gradient_methods_against_manual_autograd(method, case):
    model, x = make_model(case)
    P, cls, grid = layout_of(model)
    target = [3, 8]
    got = vitlens.explain(model, x, method, target=target)
    assert got.shape == (2, *grid)
    ref_fn = ref_grad_rollout if method == "grad-rollout" else ref_chefer
    for b, (attns, grads) in enumerate(ref_attention_gradients(model, x, target)):
        want = ref_fn(attns, grads, cls, P, grid)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=2e-3, atol=1e-6 * np.abs(want).max())


# ----------------------------------------------------------------- captum methods
def ref_pool(a: np.ndarray, grid, patch):
    (gh, gw), (ph, pw) = grid, patch
    out = np.zeros((gh, gw))
    for y in range(gh * ph):
        for x in range(gw * pw):
            out[y // ph, x // pw] += a[:, y, x].sum()
    return out


def input_gradient(model, x, t):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[0, t], x)
    return g[0]


def test_input_x_gradient_against_autograd():
    model, x = make_model("deit_distilled")
    pixels = vitlens.explain(model, x, "input-x-gradient", target=[2, 5], pixels=True)
    patches = vitlens.explain(model, x, "input-x-gradient", target=[2, 5])
    assert pixels.shape == (2, 64, 64) and patches.shape == (2, 4, 4)
    for b, t in enumerate([2, 5]):
        a = (x[b] * input_gradient(model, x[b:b + 1], t)).double().numpy()
        np.testing.assert_allclose(pixels[b].numpy(), a.sum(0), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(patches[b].numpy(), ref_pool(a, (4, 4), (16, 16)), rtol=1e-3, atol=1e-5)
    absolute = vitlens.explain(model, x, "input-x-gradient", target=[2, 5], pool="abs")
    assert bool((absolute >= patches - 1e-6).all()) and not torch.allclose(absolute, patches)


def test_ig_against_the_riemann_sum():
    model, x = make_model("vit")
    n = 8
    base = torch.full_like(x[:1], 0.3)
    got = vitlens.explain(model, x, "ig", target=[4, 1], n_steps=n, integration="riemann_middle",
                          baselines=base, pixels=True)
    for b, t in enumerate([4, 1]):
        total = torch.zeros_like(x[b])
        for k in range(n):
            alpha = (k + 0.5) / n
            total += input_gradient(model, base + alpha * (x[b:b + 1] - base), t) / n
        ref = ((x[b] - base[0]) * total).sum(0)
        np.testing.assert_allclose(got[b].numpy(), ref.double().numpy(), rtol=2e-3, atol=1e-5)


def test_ig_internal_batches_do_not_change_the_result():
    model, x = make_model("vit")
    whole = vitlens.explain(model, x, "ig", n_steps=4, internal_batch_size=8)
    torch.testing.assert_close(vitlens.explain(model, x, "ig", n_steps=4, internal_batch_size=3), whole,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vitlens.explain(model, x, "ig", n_steps=4), whole, rtol=1e-4, atol=1e-6)


def test_ig_patches_satisfy_completeness():
    """Σ patches = f(x) - f(0): why the signed sum is the default pooling."""
    model, x = make_model("gap_no_cls")
    res = vitlens.explain(model, x, "ig", n_steps=24, details=True)
    with torch.no_grad():
        f0 = model(torch.zeros_like(x)).gather(1, res.target[:, None])[:, 0]
        fx = model(x).gather(1, res.target[:, None])[:, 0]
    torch.testing.assert_close(res.maps.sum((1, 2)), fx - f0, rtol=0.03, atol=0.03)


@pytest.mark.parametrize("case", ["vit", "deit_distilled", "gap_no_cls"])
def test_gradcam_against_hand_computation(case):
    model, x = make_model(case)
    P, _, grid = layout_of(model)
    got = vitlens.explain(model, x, "gradcam", target=[6, 0])
    raw = vitlens.explain(model, x, "gradcam", target=[6, 0], relu=False)
    mid = vitlens.explain(model, x, "gradcam", target=[6, 0], layer=1)
    for b, t in enumerate([6, 0]):
        for out, layer, relu in ((got, -1, True), (raw, -1, False), (mid, 1, True)):
            logits, _, feats = manual_forward(model, x[b:b + 1])
            F = feats[layer][0, P:]                                   # [N, D] patch tokens into the block
            (g,) = torch.autograd.grad(logits[0, t], feats[layer])
            alpha = g[0, P:].mean(dim=0)                              # α_k = mean over the grid of ∂y/∂F_k
            cam = (F * alpha).sum(-1).detach()                        # Σ_k α_k F_k
            if relu:
                cam = cam.clamp_min(0)
            np.testing.assert_allclose(out[b].numpy(), cam.reshape(grid).double().numpy(), rtol=1e-3, atol=1e-6)
    assert float(raw.min()) < 0 <= float(got.min())


def test_gradcam_bad_layer():
    model, x = make_model("vit")
    with pytest.raises(ValueError, match="0..2"):
        vitlens.explain(model, x, "gradcam", layer=5)


# ------------------------------------------------------------------ targets
GRADIENT_METHODS = [m for m in METHODS if m not in CLASS_AGNOSTIC]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_default_target_is_argmax_and_target_changes_the_map(method):
    model, x = make_model("vit")
    with torch.no_grad():
        pred = model(x).argmax(-1)
    opts = fast(method)
    default = vitlens.explain(model, x, method, details=True, **opts)
    assert torch.equal(default.target, pred)
    torch.testing.assert_close(default.maps, vitlens.explain(model, x, method, target=pred, **opts))
    torch.testing.assert_close(default.maps[:1], vitlens.explain(model, x[:1], method, target=int(pred[0]), **opts))
    other = (pred + 1) % 10
    changed = vitlens.explain(model, x, method, target=other, **opts)
    for b in range(2):
        assert not torch.allclose(changed[b], default.maps[b], rtol=1e-3, atol=1e-6), b


# ---------------------------------------------------------------------- Swin
@pytest.mark.parametrize("case", ["swin_pad", "swinv2_pad"])
def test_swin_grad_rollout_against_stagewise_reference(case):
    """Swin: mean_h (∇A ⊙ A)⁺ per window, then test_swin's dense, stage-by-stage rollout reference."""
    from .test_swin import allowed_reference, blocks_of, dense_reference, make_swin, rollout_reference

    model, x = make_swin(case)
    got = vitlens.explain(model, x, "grad-rollout", target=[1, 4])
    blocks = blocks_of(model)
    for b, t in enumerate([1, 4]):
        xb = x[b:b + 1].clone().requires_grad_(True)
        with vitlens.capture(model, grad=True) as cache:
            logits = model(xb)
        attns = [cache.attention(layer) for layer in cache.layers]
        grads = torch.autograd.grad(logits[0, t], attns)
        layouts = [cache.layout_of(layer) for layer in cache.layers]
        dense = {wl.layer: dense_reference((g * a).clamp_min(0).detach().double(), wl.grid_size, wl.window_size,
                                           wl.shift_size) for wl, a, g in zip(layouts, attns, grads)}
        allowed = {wl.layer: allowed_reference(blocks[wl.layer], wl.grid_size) for wl in layouts}
        ref = rollout_reference(dense, allowed, layouts, np.mean, 0.0, 0)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-3, atol=1e-7)
    assert not torch.allclose(got, vitlens.explain(model, x, "rollout"))


@pytest.mark.parametrize("case", ["swin_pad", "swinv2_pad"])
def test_swin_gradcam_against_hand_computation(case):
    """Swin: Grad-CAM on a stage's NHWC output, each first-stage token given its merged token's value."""
    from .test_swin import make_swin

    model, x = make_swin(case)
    gh, gw = vitlens.explain(model, x, "random", details=True).layout.grid_size
    for layer in (-1, 1):
        got = vitlens.explain(model, x, "gradcam", target=[2, 7], layer=layer)
        assert got.shape == (2, gh, gw)
        s = layer % len(model.layers)
        for b, t in enumerate([2, 7]):
            feats = {}
            h = model.layers[s].register_forward_hook(lambda m, i, o: feats.__setitem__("F", o))
            try:
                logits = model(x[b:b + 1])
            finally:
                h.remove()
            F = feats["F"][0]                                            # [H_s, W_s, C]
            (g,) = torch.autograd.grad(logits[0, t], feats["F"])
            alpha = g[0].mean(dim=(0, 1))                                # α_k: mean over the stage grid
            cam = (F * alpha).sum(-1).clamp_min(0).detach()              # ReLU(Σ_k α_k F_k), [H_s, W_s]
            ref = np.zeros((gh, gw))
            for y in range(gh):
                for x_ in range(gw):
                    ref[y, x_] = cam[y // 2 ** s, x_ // 2 ** s]
            np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-3, atol=1e-6)


def test_swin_chefer_says_what_it_needs():
    from .test_swin import make_swin

    model, x = make_swin("swin_small")
    before = model_state(model)
    for method in ("chefer",):
        with pytest.raises(vitlens.UnsupportedModelError, match="token-level") as e:
            vitlens.explain(model, x, method)
        assert "'ig'" in str(e.value)
    assert_same_state(before, model_state(model))
    ixg = vitlens.explain(model, x, "input-x-gradient")
    assert ixg.shape == (2, 16, 16) and torch.isfinite(ixg).all()
    assert vitlens.explain(model, x, "grad-rollout").shape == (2, 16, 16)
    assert vitlens.explain(model, x, "gradcam").shape == (2, 16, 16)
    assert_same_state(before, model_state(model))


def test_frozen_model_gives_the_same_maps():
    """Gradients start at the input, so a model with every parameter frozen explains the same."""
    model, x = make_model("deit_distilled")
    want = {m: vitlens.explain(model, x, m, target=[1, 2]) for m in ("chefer", "gradcam", "input-x-gradient")}
    model.requires_grad_(False)
    before = model_state(model)
    for m, w in want.items():
        torch.testing.assert_close(vitlens.explain(model, x, m, target=[1, 2]), w)
    assert_same_state(before, model_state(model))
    assert not any(p.requires_grad for p in model.parameters())
