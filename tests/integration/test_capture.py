"""Capture contract: probabilities equal an independent recomputation, outputs unchanged,
hooks and flags restored after success and after exceptions, for every listed family."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitlens
from vitlens.errors import UnsupportedModelError

from ..conftest import make_model

EXPECTED_PREFIX = {
    "deit_distilled": ("cls", "dist"),
    "dinov2_reg4": ("cls", "reg", "reg", "reg", "reg"),
    "gap_no_cls": (),
}


def hook_state(model: torch.nn.Module) -> dict:
    """Every hook dict size and every fused_attn flag, per module."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                     getattr(m, "fused_attn", None))
    return out


def attention_io(model: torch.nn.Module, x: torch.Tensor):
    """One plain forward: each block's attention input and output, and the logits."""
    inputs, outputs = {}, {}
    hs = []
    for i, blk in enumerate(model.blocks):
        hs.append(blk.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach())))
        hs.append(blk.attn.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o.detach())))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hs:
            h.remove()
    return inputs, outputs, logits


def reference_attention(model: torch.nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """softmax(q·kᵀ·scale) recomputed from each block's qkv weights and its real input.

    Also checks that these probabilities reproduce the attention module's actual output
    (A @ v, projected), so they are the ones the model used.
    """
    inputs, outputs, _ = attention_io(model, x)
    ref = {}
    for i, blk in enumerate(model.blocks):
        attn, inp = blk.attn, inputs[i].double()
        B, N, C = inp.shape
        H = attn.num_heads
        hd = attn.qkv.weight.shape[0] // 3 // H
        qkv = F.linear(inp, attn.qkv.weight.double(),
                       None if attn.qkv.bias is None else attn.qkv.bias.double())
        q, k, v = qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
        q = attn.q_norm.double()(q) if not isinstance(attn.q_norm, torch.nn.Identity) else q
        k = attn.k_norm.double()(k) if not isinstance(attn.k_norm, torch.nn.Identity) else k
        attn.q_norm.float(), attn.k_norm.float()
        a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, dim=-1)
        y = (a @ v).transpose(1, 2).reshape(B, N, H * hd)
        y = attn.proj.double()(attn.norm.double()(y))
        attn.proj.float(), attn.norm.float()
        torch.testing.assert_close(y.float(), outputs[i], atol=2e-4, rtol=1e-3)
        ref[i] = a.float()
    return ref


def test_probabilities_match_independent_recomputation(family_model):
    case, model, x = family_model
    ref = reference_attention(model, x)
    with vitlens.capture(model) as cache:
        model(x)
    assert cache.layers == list(range(len(model.blocks)))
    for layer, a in ref.items():
        got = cache.attention(layer)
        assert got.shape == a.shape == (x.shape[0], model.blocks[0].attn.num_heads,
                                        cache.layout.num_tokens, cache.layout.num_tokens)
        torch.testing.assert_close(got, a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5, rtol=0)
        assert (got >= 0).all()
    # the attention does not look uniform: the test would notice a wrong row/column order
    assert cache.attention(-1).std() > 1e-3


def test_layout_known_from_model(family_model):
    case, model, x = family_model
    with vitlens.capture(model, layers=-1) as cache:
        model(x)
    lay = cache.layout
    ph, pw = lay.patch_size
    assert lay.input_size == tuple(x.shape[-2:])
    assert lay.grid_size == (x.shape[-2] // ph, x.shape[-1] // pw)
    assert lay.num_prefix_tokens == model.num_prefix_tokens
    assert lay.prefix_names == EXPECTED_PREFIX.get(case, ("cls",))
    assert cache.attention(-1).shape[-1] == lay.num_tokens
    assert cache.hook_points[len(model.blocks) - 1] == f"blocks.{len(model.blocks) - 1}.attn"


def test_outputs_unchanged_and_hooks_removed(family_model):
    case, model, x = family_model
    before_state = hook_state(model)
    with torch.no_grad():
        plain = model(x)
        with vitlens.capture(model) as cache:
            inside = model(x)
        after = model(x)
    assert torch.equal(plain, inside), "recompute capture must leave outputs bit-identical"
    assert torch.equal(plain, after)
    assert hook_state(model) == before_state
    assert all(b.attn.fused_attn for b in model.blocks), "timm default (fused) must stay on"

    with vitlens.capture(model, grad=True) as gcache:
        assert not any(b.attn.fused_attn for b in model.blocks)
        with torch.no_grad():
            unfused = model(x)
    torch.testing.assert_close(unfused, plain, atol=1e-5, rtol=1e-4)
    assert hook_state(model) == before_state
    for layer in cache.layers:  # timm's own unfused softmax equals the recomputation
        torch.testing.assert_close(gcache.attention(layer), cache.attention(layer), atol=1e-5, rtol=1e-4)


def assert_cleanup_after_exceptions(model, x, layers, failing_module, grad: bool) -> None:
    """Hooks and flags are as before after an error in the with-body and in the forward."""
    before = hook_state(model)
    with pytest.raises(KeyError, match="boom"):
        with vitlens.capture(model, grad=grad):
            model(x)
            raise KeyError("boom")
    assert hook_state(model) == before

    def explode(*_):
        raise RuntimeError("forward failed")

    h = failing_module.register_forward_hook(explode)
    before = hook_state(model)
    try:
        with pytest.raises(RuntimeError, match="forward failed"):
            with vitlens.capture(model, layers=layers, grad=grad):
                model(x)
        assert hook_state(model) == before
    finally:
        h.remove()


@pytest.mark.parametrize("grad", [False, True])
def test_cleanup_after_exception_in_body_and_in_forward(grad):
    model, x = make_model("deit_distilled")
    assert_cleanup_after_exceptions(model, x, [0, 2], model.blocks[1], grad)
    assert all(b.attn.fused_attn for b in model.blocks)


def test_restores_non_default_flags():
    model, x = make_model("vit")
    model.blocks[1].attn.fused_attn = False  # user's own setting must survive
    before = hook_state(model)
    with vitlens.capture(model, grad=True):
        model(x)
    assert hook_state(model) == before
    assert model.blocks[1].attn.fused_attn is False and model.blocks[0].attn.fused_attn is True


def test_layers_heads_rows_dtype_selection():
    model, x = make_model("deit_distilled")
    with vitlens.capture(model) as full:
        model(x)
    with vitlens.capture(model, layers=[0, -1], heads=[2, 0], rows="prefix", dtype=torch.float16) as part:
        model(x)
    assert part.layers == [0, 2] and part.heads == (0, 2) and part.rows == "prefix"
    for layer in (0, -1):
        got = part.attention(layer)
        assert got.dtype == torch.float16 and got.shape == (2, 2, 2, full.layout.num_tokens)
        torch.testing.assert_close(got.float(), full.attention(layer)[:, [0, 2], :2], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="layer 1 was not recorded"):
        part.attention(1)
    with pytest.raises(ValueError, match="valid layers are 0..2"):
        part.attention(3)
    # only the selected blocks were hooked: the others keep no hook at all
    with vitlens.capture(model, layers=[1]):
        assert len(model.blocks[0].attn.k_norm._forward_hooks) == 0
        assert len(model.blocks[1].attn.k_norm._forward_hooks) == 1


def test_negative_indices_and_range_errors():
    model, x = make_model("vit")
    with vitlens.capture(model, layers=[-1]) as cache:
        model(x)
    assert cache.layers == [2]
    torch.testing.assert_close(cache.attention(-1), cache.attention(2))
    with pytest.raises(ValueError, match=r"layer 3 is out of range.*0..2"):
        with vitlens.capture(model, layers=[3]):
            pass
    with pytest.raises(ValueError, match=r"head 3 is out of range.*0..2"):
        with vitlens.capture(model, heads=[3]):
            pass
    with pytest.raises(ValueError, match="rows must be one of"):
        with vitlens.capture(model, rows="cls"):
            pass
    gap, _ = make_model("gap_no_cls")
    with pytest.raises(ValueError, match="no prefix tokens"):
        with vitlens.capture(gap, rows="prefix"):
            pass
    with pytest.raises(ValueError, match="nothing was recorded"):
        with vitlens.capture(model) as empty:
            pass
        empty.attention(0)


def test_batches_accumulate_and_geometry_change_is_refused():
    model, x = make_model("dynamic_img_size")
    with vitlens.capture(model, layers=-1) as cache:
        model(x[:1])
        model(x[1:])
    with vitlens.capture(model, layers=-1) as whole:
        model(x)
    torch.testing.assert_close(cache.attention(-1), whole.attention(-1), atol=1e-6, rtol=1e-5)
    assert cache.batch_size == 2
    with pytest.raises(ValueError, match="one input geometry"):
        with vitlens.capture(model, layers=-1):
            model(x)
            model(torch.randn(1, 3, 64, 64))
    assert hook_state(model) == hook_state(make_model("dynamic_img_size")[0])


def test_grad_mode_keeps_graph():
    model, x = make_model("vit")
    with vitlens.capture(model, grad=True) as cache:
        logits = model(x)
    a = cache.attention(-1)
    assert a.requires_grad and a.grad_fn is not None
    (g,) = torch.autograd.grad(logits[:, 0].sum(), a)
    assert g.shape == a.shape and g.abs().sum() > 0
    with vitlens.capture(model) as plain:
        model(x)
    assert not plain.attention(-1).requires_grad


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])  # XCiT: class attention is recorded
def test_unsupported_architectures_name_supported_families(name):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=10)
    with pytest.raises(UnsupportedModelError, match="VisionTransformer") as e:
        with vitlens.capture(model):
            pass
    assert type(model).__name__ in str(e.value)
    assert "VisionTransformer" in vitlens.supported_families()
