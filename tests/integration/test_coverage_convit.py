"""ConViT (issue #11 b): GPSA layers record the gated mixture the model multiplies with v; the
MHSA layers after the class token joins are recorded on their own (1 + N) sequence.

The oracle tests (test_oracle.py) compare every layer with the left operand of the module's
weights @ v product; these reproduce a GPSA block's output from the recorded weights and its
own v, and check what the token analyses do."""
from __future__ import annotations

import pytest
import timm
import torch

import vitlens


def build():
    torch.manual_seed(0)
    # timm's ConViT multiplies embed_dim by num_heads: 16 x 4 heads = 64 channels
    return timm.create_model("convit_tiny", pretrained=False, img_size=48, depth=3, local_up_to_layer=2,
                             embed_dim=16, num_heads=4, num_classes=5).eval()


def test_gpsa_weights_are_the_mixture_applied_to_v():
    model = build()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    seen = {}
    attn = model.blocks[0].attn
    attn.register_forward_hook(lambda m, a, o: seen.update(x=a[0], out=o))
    with torch.no_grad(), vitlens.capture(model) as cache:
        y = model(x)
    assert torch.equal(y, model(x))
    w = cache.attention(0)
    assert w.shape == (2, 4, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9), atol=1e-5, rtol=0)
    h = seen["x"]
    with torch.no_grad():
        v = attn.v(h).reshape(2, 9, 4, 16).permute(0, 2, 1, 3)
        out = attn.proj((w @ v).transpose(1, 2).reshape(2, 9, 64))
        qk = attn.qk(h).reshape(2, 9, 2, 4, 16).permute(2, 0, 3, 1, 4)
        content = ((qk[0] @ qk[1].transpose(-2, -1)) * attn.scale).softmax(-1)
    torch.testing.assert_close(out, seen["out"], atol=1e-5, rtol=1e-4)
    assert (w - content).abs().max() > 0.05  # not the content softmax alone: the positional part is in


def test_class_token_layers_are_refused_by_token_analyses_and_gpsa_layers_feed_them():
    model = build()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    spec = cache.spec(2)
    assert (spec.hook_point, spec.num_queries, spec.query_prefix, cache.layout.num_prefix_tokens) == \
        ("blocks.2.attn", 10, 1, 0)
    with pytest.raises(ValueError, match=r"blocks\.2\.attn.*10 queries"):
        vitlens.rollout(cache)
    with torch.no_grad(), vitlens.capture(model, layers=[0, 1]) as gpsa:
        model(x)
    r = vitlens.rollout(gpsa)
    assert r.shape == (1, 3, 3) and torch.allclose(r.sum((1, 2)), torch.ones(1))
    assert torch.isfinite(vitlens.mean_attention_distance(gpsa)).all()
    with pytest.raises(ValueError, match="prefix"):
        with vitlens.capture(model, rows="prefix"):
            pass
    cam = vitlens.explain(model, x, method="gradcam", details=True)
    assert cam.maps.shape[0] == 1 and torch.isfinite(cam.maps).all()
