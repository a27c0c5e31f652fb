"""Gemma 4 ViT tower (issue #11 a): the standard image path is recorded; NaFlex input
(pre-patchified patches with coordinates and padding) is refused with the reason.

The oracle tests (test_oracle.py) check the recorded attention against the model's own
softmax (GQA included); these check the layout, an independent recomputation of one layer
from the module's weights, and the refusal."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.gemma4_vit import apply_multidimensional_rope

import vitlens
from vitlens.errors import UnsupportedModelError

TINY = dict(embed_dim=64, depth=2, num_heads=4, head_dim=16, intermediate_size=128, num_classes=5)


def build(**kw):
    torch.manual_seed(0)
    return timm.create_model("gemma4_vit_167m", pretrained=False, **TINY, **kw).eval()


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_first_layer_equals_a_recomputation_from_the_weights():
    model = build()
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    seen = {}
    model.encoder.blocks[0].attn.register_forward_pre_hook(lambda m, a: seen.update(x=a[0], cos=a[1], sin=a[2]))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    assert cache.layout.grid_size == (3, 4) and cache.layout.num_prefix_tokens == 0
    a = cache.attention(0)
    assert a.shape == (2, 4, 12, 12)
    attn, h = model.encoder.blocks[0].attn, seen["x"]
    with torch.no_grad():  # q, k: projection, RMS norm, 2D RoPE; scale 1
        q = attn.q_norm(attn.q_proj(h).view(2, 12, 4, 16))
        k = attn.k_norm(attn.k_proj(h).view(2, 12, 4, 16))
        q = apply_multidimensional_rope(q, seen["cos"], seen["sin"], ndim=2, unsqueeze_dim=2).transpose(1, 2)
        k = apply_multidimensional_rope(k, seen["cos"], seen["sin"], ndim=2, unsqueeze_dim=2).transpose(1, 2)
        ref = F.softmax(q @ k.transpose(-1, -2), -1)
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-4)
    r = vitlens.rollout(cache)
    assert r.shape == (2, 3, 4) and torch.allclose(r.sum((1, 2)), torch.ones(2))


def test_naflex_input_is_refused_and_leaks_nothing():
    model = build()
    x = torch.rand(2, 3, 48, 48)
    patches, (gh, gw) = timm.models.naflexvit.batch_patchify(x, (16, 16))
    coord = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1).reshape(1, -1, 2)
    coord = coord.expand(2, -1, -1).clone()
    coord[1, -2:] = -1  # padding in the second image
    before = _hooks(model)
    model(patches, patch_coord=coord)  # the model itself accepts it
    for call in (lambda: model(patches, patch_coord=coord),
                 lambda: model({"patches": patches, "patch_coord": coord}),
                 lambda: model(x, patch_coord=coord[:1].expand(2, -1, -1))):
        with pytest.raises(UnsupportedModelError, match="NaFlex input .* refused.*\\[B, C, H, W\\]"):
            with torch.no_grad(), vitlens.capture(model):
                call()
    assert _hooks(model) == before
