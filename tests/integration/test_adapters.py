"""BEiT, EVA and the generic path: captured probabilities are the ones the model used."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitlens

from .test_capture import attention_io, hook_state

CASES = {
    "beit": ("beit_base_patch16_224", dict(img_size=64, depth=2, embed_dim=96, num_heads=3)),
    "beitv2": ("beitv2_base_patch16_224", dict(img_size=64, depth=2, embed_dim=96, num_heads=3)),
    "eva02_rope": ("eva02_tiny_patch14_224", dict(img_size=56, depth=2)),
    "eva_reg4_gap": ("vit_betwixt_patch16_rope_reg4_gap_256", dict(img_size=64, depth=2)),
}
PREFIX = {"eva_reg4_gap": ("reg", "reg", "reg", "reg")}
FAMILY = {"beit": "BEiT", "beitv2": "BEiT", "eva02_rope": "EVA", "eva_reg4_gap": "EVA"}


def make(case):
    import timm

    name, kw = CASES[case]
    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    except RuntimeError as e:  # model name not in this timm version
        pytest.skip(str(e))
    size = kw["img_size"]
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def value_vectors(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """v [B, H, T, d] from the module's own weights, independently of its forward."""
    B, N, _ = x.shape
    H = attn.num_heads
    if getattr(attn, "qkv", None) is not None:
        w = attn.qkv.weight
        bias = attn.qkv.bias
        if getattr(attn, "v_bias", None) is not None:
            bias = torch.cat([attn.q_bias, attn.k_bias if getattr(attn, "k_bias", None) is not None
                              else torch.zeros_like(attn.v_bias), attn.v_bias])
        qkv = F.linear(x, w, bias).reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4)
        return qkv[2]
    return attn.v_proj(x).reshape(B, N, H, -1).transpose(1, 2)


@pytest.mark.parametrize("case", list(CASES))
def test_probabilities_reproduce_the_attention_output(case):
    model, x = make(case)
    before = hook_state(model)
    inputs, outputs, plain = attention_io(model, x)  # plain forward, timm's fused kernel
    with torch.no_grad(), vitlens.capture(model) as cache:
        inside = model(x)
    assert cache.family == FAMILY[case]
    assert hook_state(model) == before  # hooks removed, fused_attn restored
    torch.testing.assert_close(inside, plain, atol=1e-5, rtol=1e-4)
    lay = cache.layout
    assert lay.num_prefix_tokens == model.num_prefix_tokens
    assert lay.prefix_names == PREFIX.get(case, ("cls",))
    for i, blk in enumerate(model.blocks):
        a = cache.attention(i)
        assert a.shape == (2, blk.attn.num_heads, lay.num_tokens, lay.num_tokens)
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5, rtol=0)
        v = value_vectors(blk.attn, inputs[i])
        y = (a @ v).transpose(1, 2).reshape(x.shape[0], lay.num_tokens, -1)
        y = blk.attn.proj(getattr(blk.attn, "norm", torch.nn.Identity())(y))
        # outputs[i] came from the fused kernel in the first forward; the recorded A must reproduce it
        torch.testing.assert_close(y, outputs[i], atol=2e-4, rtol=1e-3)


def test_exception_restores_flags_and_hooks():
    model, x = make("eva02_rope")
    before = hook_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with vitlens.capture(model, layers=[0]):  # default path: recomputed beside the fused kernel
            assert model.blocks[0].attn.fused_attn is True
            raise RuntimeError("boom")
    assert hook_state(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with vitlens.capture(model, layers=[0], grad=True):  # gradient path: the recorded layer runs unfused
            assert model.blocks[0].attn.fused_attn is False
            assert model.blocks[1].attn.fused_attn is True  # unrecorded layer stays fused
            raise RuntimeError("boom")
    assert hook_state(model) == before


def test_rollout_and_cls_on_beit():
    model, x = make("beit")
    with vitlens.capture(model) as cache:
        model(x)
    roll = vitlens.rollout(cache)
    assert roll.shape == (2, 4, 4)
    torch.testing.assert_close(roll.sum((-1, -2)), torch.ones(2))
    cls = vitlens.cls_attention(cache)
    torch.testing.assert_close(cls, cache.attention(-1)[:, :, 0, 1:].mean(1).reshape(2, 4, 4))
