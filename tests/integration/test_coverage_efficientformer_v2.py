"""EfficientFormerV2 (issue #11 b): talking-heads block attention recorded as the signed weights
the model multiplies with v (LayerSpec.softmax False), downsampling attention as probabilities
with queries on the halved grid.

The oracle tests (test_oracle.py) compare every layer with the model's own computation; these
reproduce a block's attention output from the recorded weights and its own v, and check that
token analyses refuse these layers and that another input size is refused."""
from __future__ import annotations

import pytest
import timm
import torch

import vitlens
from vitlens.errors import UnsupportedModelError


def build(**kw):
    torch.manual_seed(0)
    return timm.create_model("efficientformerv2_s0", pretrained=False, num_classes=5, img_size=96, **kw).eval()


def test_talking_heads_weights_reproduce_the_attention_output():
    model = build()
    path = "stages.3.blocks.2.token_mixer"
    attn = model.get_submodule(path)
    seen = {}
    attn.register_forward_hook(lambda m, a, o: seen.update(x=a[0], out=o))
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), vitlens.capture(model) as cache:
        y = model(x)
    assert torch.equal(y, model(x))
    layer = [s.hook_point for s in cache.description.layers].index(path)
    spec = cache.spec(layer)
    assert (spec.num_queries, spec.num_keys, spec.query_grid, spec.softmax) == (9, 9, (3, 3), False)
    w = cache.attention(layer)
    assert (w.sum(-1) - 1).abs().max() > 1e-3  # talking heads: not row-normalised
    h = seen["x"]
    B, H = 2, attn.num_heads
    with torch.no_grad():
        v = attn.v(h)
        v_local = attn.v_local(v)
        v = v.reshape(B, H, -1, attn.N).permute(0, 1, 3, 2)
        out = (w @ v).transpose(2, 3).reshape(B, attn.dh, *attn.resolution) + v_local
        out = attn.proj(attn.act(out))
    torch.testing.assert_close(out, seen["out"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="not softmax probabilities"):
        vitlens.rollout(cache)


def test_downsampling_attention_has_queries_on_the_halved_grid():
    model = build()
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(torch.randn(1, 3, 96, 96))
    layer = [s.hook_point for s in cache.description.layers].index("stages.3.downsample.attn")
    spec = cache.spec(layer)
    assert (spec.query_grid, spec.key_grid, spec.softmax) == ((3, 3), (6, 6), True)
    a = cache.attention(layer)
    assert a.shape == (1, 8, 9, 36)
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 8, 9), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="9 queries on grid \\(3, 3\\) and 36 keys on grid \\(6, 6\\)"):
        vitlens.mean_attention_distance(cache, layers=[layer])


def test_another_input_size_is_refused():
    model = build()
    with pytest.raises(UnsupportedModelError, match="fixed input size \\(96x96\\); got 128x128"):
        with torch.no_grad(), vitlens.capture(model):
            model(torch.randn(1, 3, 128, 128))
