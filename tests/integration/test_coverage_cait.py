"""CaiT: talking-heads weights are recorded as what multiplies v (declared softmax=False) and
class-attention as kind "class"; analyses that need probabilities refuse them."""
from __future__ import annotations

import pytest
import timm
import torch

import vitlens
from vitlens.capture.adapters import adapter_for


@pytest.fixture(scope="module")
def cait():
    torch.manual_seed(0)
    model = timm.create_model("cait_xxs24_224", pretrained=False, num_classes=5, img_size=48, depth=2,
                              depth_token_only=1).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), vitlens.capture(model) as cache:
        out = model(x)
    return model, x, cache, out


def test_talking_heads_weights_reproduce_the_attention_output(cait):
    model, x, cache, _ = cait
    attn = model.blocks[0].attn
    seen = {}
    attn.register_forward_hook(lambda m, a, o: seen.update(inp=a[0], out=o))
    with torch.no_grad():
        model(x)
        B, N, C = seen["inp"].shape
        v = attn.qkv(seen["inp"]).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)[2]
        w = cache.attention(0)
        y = attn.proj((w @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(y, seen["out"], atol=1e-5, rtol=1e-4)
    spec = cache.spec(0)
    assert (spec.kind, spec.softmax, spec.num_queries) == ("self", False, 9)
    assert (w.sum(-1) - 1).abs().max() > 1e-2  # mixing after the softmax: rows are not distributions


def test_class_attention_layer_geometry(cait):
    _, _, cache, _ = cait
    spec = cache.spec(-1)
    assert (spec.hook_point, spec.kind, spec.softmax, spec.num_queries, spec.num_keys, spec.key_prefix) == \
        ("blocks_token_only.0.attn", "class", True, 1, 10, 1)
    a = cache.attention(-1)
    assert a.shape == (2, 4, 1, 10)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 1), atol=1e-5, rtol=0)
    assert not cache.description.has_cls  # the input sequence has no class token


def test_analyses_refuse_non_probability_and_class_layers(cait):
    _, _, cache, _ = cait
    with pytest.raises(ValueError, match="not softmax probabilities.*talking-heads"):
        vitlens.rollout(cache)
    with pytest.raises(ValueError, match="not softmax probabilities"):
        vitlens.mean_attention_distance(cache, layers=[0])
    with pytest.raises(ValueError, match="class attention with 1 queries"):
        vitlens.mean_attention_distance(cache, layers=[-1])


def test_rows_prefix_is_refused_and_outputs_unchanged(cait):
    model, x, _, out = cait
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)
    with pytest.raises(ValueError, match="no prefix tokens"):
        with vitlens.capture(model, rows="prefix"):
            pass
    assert adapter_for(model).gradcam_points() == (("blocks.0.norm1", "blocks.1.norm1"), "tokens")
