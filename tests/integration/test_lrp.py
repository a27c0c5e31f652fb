"""AttnLRP and CP-LRP against a direct per-layer implementation of the papers' rules.

The reference below never calls vitlens and never uses autograd: it re-implements a timm
VisionTransformer forward by hand and then propagates relevance *explicitly*, layer by
layer, with the rules written in their ``R = Σ contribution / z · R_out`` form
(Achtibat et al. 2024, eqs. 7, 9 and Prop. 3.1; Ali et al. 2022; the generalised
γ-rule as zennit's ``Gamma``). vitlens computes the same relevance as one modified
backward pass (gradient x input); the two must agree to float64 rounding.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import vitlens
from vitlens.analysis.lrp import RelevanceRules, lrp_relevance, relevance_rules
from vitlens.errors import UnsupportedModelError

EPS = 1e-12


def _div(a, z):
    return a / (z + torch.where(z >= 0, EPS, -EPS).to(z.dtype))


def lin_rel(x, W, b, R, gamma=0.0):
    """Relevance of the input of ``z = x Wᵀ + b`` (last dim), from explicit contributions ``x_i W_ji``."""
    if gamma == 0.0:
        c = x[..., None, :] * W                                   # [..., out, in]
        z = c.sum(-1) + (0 if b is None else b)
        return (c * _div(R, z)[..., None]).sum(-2)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    Wp, Wn = W + gamma * W.clamp(min=0), W + gamma * W.clamp(max=0)
    bb = torch.zeros(W.shape[0], dtype=x.dtype) if b is None else b
    bp, bn = bb + gamma * bb.clamp(min=0), bb + gamma * bb.clamp(max=0)
    z = x @ W.T + bb
    c_pos = xp[..., None, :] * Wp + xn[..., None, :] * Wn       # shares of a positive output
    c_neg = xp[..., None, :] * Wn + xn[..., None, :] * Wp       # shares of a negative output
    r_pos = torch.where(z > 0, _div(R, c_pos.sum(-1) + bp), 0.0)
    r_neg = torch.where(z < 0, _div(R, c_neg.sum(-1) + bn), 0.0)
    return (c_pos * r_pos[..., None]).sum(-2) + (c_neg * r_neg[..., None]).sum(-2)


def ln_rel(x, ln, R):
    """LayerNorm with σ constant: affine (elementwise, with bias), then the centring matrix ``I − 1/D``."""
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    sigma = (xc.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    xhat = xc / sigma
    y = xhat * ln.weight + ln.bias
    R_xhat = _div(xhat * ln.weight, y) * R                        # bias keeps its share
    D = x.shape[-1]
    C = torch.eye(D, dtype=x.dtype) - 1.0 / D                     # xc_i = Σ_j C_ij x_j
    contrib = C[None, None] * x[..., None, :]                     # [B, T, i, j]
    return (contrib * _div(R_xhat, xc)[..., None]).sum(-2)        # R_xc = R_xhat (σ constant)


def add_rel(a, b, R):
    z = a + b
    return _div(a, z) * R, _div(b, z) * R


def reference_lrp(model, x, target, variant, gamma=0.0, conv_gamma=0.0):
    """Pixel relevance ``[B, 3, H, W]`` and the target logits, by explicit per-layer propagation."""
    pe = model.patch_embed.proj
    p = pe.kernel_size[0]
    B = x.shape[0]
    patches = F.unfold(x, p, stride=p).transpose(1, 2)            # [B, N, 3·p·p]
    Wpe = pe.weight.reshape(pe.out_channels, -1)
    tok = patches @ Wpe.T + pe.bias                                # [B, N, D]
    pre = torch.cat([model.cls_token.expand(B, -1, -1), tok], 1)
    t = pre + model.pos_embed
    cache = []
    for blk in model.blocks:
        at = blk.attn
        H, d = at.num_heads, at.head_dim
        T = t.shape[1]
        h = blk.norm1(t)
        qkv = h @ at.qkv.weight.T + at.qkv.bias
        q, k, v = qkv.reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4)
        s = (q @ k.transpose(-2, -1)) * at.scale
        A = s.softmax(-1)
        o = A @ v
        om = o.transpose(1, 2).reshape(B, T, H * d)
        po = om @ at.proj.weight.T + at.proj.bias
        t1 = t + po
        h2 = blk.norm2(t1)
        f1 = h2 @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
        a = F.gelu(f1)
        f2 = a @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
        t2 = t1 + f2
        cache.append((t, h, qkv, q, k, v, s, A, o, om, po, t1, h2, f1, a, f2))
        t = t2
    hn = model.norm(t)
    pooled = hn[:, 0]
    logits = pooled @ model.head.weight.T + model.head.bias
    y = logits.gather(1, target[:, None])
    # ---- backward, relevance form
    R_logits = torch.zeros_like(logits).scatter(1, target[:, None], y)
    R_pooled = lin_rel(pooled, model.head.weight, model.head.bias, R_logits, gamma)
    R = torch.zeros_like(hn)
    R[:, 0] = R_pooled
    R = ln_rel(t, model.norm, R)
    for blk, (t0, h, qkv, q, k, v, s, A, o, om, po, t1, h2, f1, a, f2) in zip(reversed(model.blocks), reversed(cache)):
        at = blk.attn
        H, d = at.num_heads, at.head_dim
        T = t0.shape[1]
        R_t1, R_f2 = add_rel(t1, f2, R)
        R_a = lin_rel(a, blk.mlp.fc2.weight, blk.mlp.fc2.bias, R_f2, gamma)
        R_f1 = R_a                                                  # identity rule
        R_h2 = lin_rel(h2, blk.mlp.fc1.weight, blk.mlp.fc1.bias, R_f1, gamma)
        R_t1 = R_t1 + ln_rel(t1, blk.norm2, R_h2)
        R_t0, R_po = add_rel(t0, po, R_t1)
        R_om = lin_rel(om, at.proj.weight, at.proj.bias, R_po, gamma)
        R_o = R_om.reshape(B, T, H, d).transpose(1, 2)             # [B, H, T, d]
        c = A[..., :, :, None] * v[..., None, :, :]                 # [B, H, i, j, d]: A_ij v_jd
        share = c * _div(R_o, o)[..., :, None, :]
        half = 1.0 if variant == "cp-lrp" else 0.5
        R_v = half * share.sum(2)                                   # Σ_i
        if variant == "cp-lrp":
            R_q = torch.zeros_like(q)
            R_k = torch.zeros_like(k)
        else:
            R_A = 0.5 * share.sum(-1)                                 # Σ_d
            R_s = s * (R_A - A * R_A.sum(-1, keepdim=True))         # AttnLRP softmax rule
            cq = q[..., :, None, :] * k[..., None, :, :] * at.scale  # [B, H, i, j, d]: q_id k_jd scale
            sh = cq * _div(R_s, s)[..., None]
            R_q = 0.5 * sh.sum(3)
            R_k = 0.5 * sh.sum(2)
        R_qkv = torch.stack([R_q, R_k, R_v]).permute(1, 3, 0, 2, 4).reshape(B, T, 3 * H * d)
        R_h = lin_rel(h, at.qkv.weight, at.qkv.bias, R_qkv, gamma)
        R = R_t0 + ln_rel(t0, blk.norm1, R_h)
    R_pre, _R_pos = add_rel(pre, model.pos_embed.expand(B, -1, -1), R)
    R_patches = lin_rel(patches, Wpe, pe.bias, R_pre[:, 1:], conv_gamma)
    R_x = F.fold(R_patches.transpose(1, 2), x.shape[-2:], p, stride=p)
    return R_x, y[:, 0]


@pytest.fixture(scope="module")
def small_vit():
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24,
                          depth=2, num_heads=2, num_classes=5).eval().double()
    with torch.no_grad():   # non-trivial norms and biases (timm initialises them to 1 and 0)
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
            elif "norm" in n:
                p.normal_(1, 0.2)
    return m


@pytest.mark.parametrize("variant", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("gamma", [0.0, 0.25])
def test_equals_explicit_reference(small_vit, variant, gamma):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 3, 4])
    with torch.no_grad():
        ref, y = reference_lrp(small_vit, x, target, variant, gamma=gamma, conv_gamma=gamma)
    rel, logits, tgt, layout, _ = lrp_relevance(small_vit, x, target, variant=variant, gamma=gamma, conv_gamma=gamma)
    assert torch.allclose(logits.gather(1, tgt[:, None])[:, 0], y)
    scale = ref.abs().max()
    assert scale > 0
    assert torch.allclose(rel, ref, atol=1e-6 * float(scale), rtol=1e-6), float((rel - ref).abs().max() / scale)
    # and the rules matter: plain gradient x input is something else
    xg = x.clone().requires_grad_(True)
    gi = torch.autograd.grad(small_vit(xg).gather(1, target[:, None]).sum(), xg)[0] * x
    assert not torch.allclose(gi, ref, atol=1e-3 * float(scale))


def test_variants_differ_and_explain_maps(small_vit):
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    a = vitlens.explain(small_vit, x, method="attnlrp", target=1)
    c = vitlens.explain(small_vit, x, method="cp-lrp", target=1)
    assert a.shape == c.shape == (2, 4, 4) and a.dtype == torch.float32
    assert not torch.allclose(a, c)
    rel, *_ = lrp_relevance(small_vit, x, 1)
    assert torch.allclose(a, rel.sum(1).reshape(2, 4, 8, 4, 8).sum((2, 4)).float(), atol=1e-6)
    px = vitlens.explain(small_vit, x, method="attnlrp", target=1, pixels=True)
    assert px.shape == (2, 32, 32)
    assert torch.allclose(px, rel.sum(1).float(), atol=1e-6)


# ------------------------------------------------------------------- conservation
def _bias_free(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.zero_()
            elif "norm" in n and n.endswith("weight"):
                p.normal_(1, 0.2)      # SwinV2 zero-initialises its post-norms: make every branch count
    return model


CONSERVATION_CASES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=2)),
    "clip_quickgelu": ("vit_base_patch32_clip_quickgelu_224",
                       dict(img_size=64, depth=2, embed_dim=64, num_heads=2)),
    "beit": ("beit_base_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(2, 2), embed_dim=24, num_heads=(1, 2))),
    "swinv2": ("swinv2_tiny_window8_256", dict(img_size=64, depths=(2, 2), embed_dim=24, num_heads=(1, 2))),
}


@pytest.mark.parametrize("case", list(CONSERVATION_CASES))
def test_conservation(case):
    """Bias-free model: CP-LRP conserves the target logit exactly (pixels + prefix tokens + position
    embeddings); AttnLRP loses a part in the softmax (the rule's Taylor bias term), never gains."""
    name, kw = CONSERVATION_CASES[case]
    torch.manual_seed(0)
    m = _bias_free(timm.create_model(name, pretrained=False, num_classes=4, **kw).eval().double())
    size = m.pretrained_cfg["input_size"][1:] if "img_size" not in kw else (kw["img_size"],) * 2
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    extras = [getattr(m, a) for a in ("cls_token", "dist_token", "reg_token", "pos_embed")
              if isinstance(getattr(m, a, None), torch.nn.Parameter)]
    totals = {}
    for variant in ("cp-lrp", "attnlrp"):
        rel, logits, tgt, _layout, ex = lrp_relevance(m, x, variant=variant, extra_inputs=extras)
        y = logits.gather(1, tgt[:, None]).sum()
        totals[variant] = float((rel.sum() + sum(e.sum() for e in ex)) / y)
    assert totals["cp-lrp"] == pytest.approx(1.0, abs=1e-9)
    assert totals["attnlrp"] != pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------- fail closed
class _ExpNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(torch.exp(x))


def test_uncovered_operation_is_refused():
    net = _ExpNet()
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(UnsupportedModelError, match="'exp'"):
        with relevance_rules(net):
            net(x)
    with pytest.raises(UnsupportedModelError, match="division"):
        with RelevanceRules():
            x / (x + 2)


def test_leaves_model_as_found(small_vit):
    before = {n: (p.requires_grad, p.grad) for n, p in small_vit.named_parameters()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in small_vit.modules())
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    vitlens.explain(small_vit, x, method="attnlrp", gamma=0.1)
    assert {n: (p.requires_grad, p.grad) for n, p in small_vit.named_parameters()} == before
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in small_vit.modules()) == hooks
    with torch.no_grad():   # and outside the block the model computes as before (no mode left)
        assert small_vit(x).requires_grad is False


def test_unknown_variant():
    with pytest.raises(ValueError, match="attnlrp"):
        RelevanceRules("lrp")
