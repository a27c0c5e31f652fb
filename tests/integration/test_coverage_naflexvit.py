"""NaFlexViT (issue #11 a): the standard image path is recorded; NaFlex mode (pre-patchified,
variable-length, masked input) is refused with the reason.

The oracle tests (test_oracle.py) check every recorded layer against the model's own
softmax; these check the token layout (read from the embedding's returned grid), other
input sizes, the pool head's keys, and the refusal."""
from __future__ import annotations

import pytest
import timm
import torch

import vitlens
from vitlens.capture.adapters import adapter_for
from vitlens.errors import UnsupportedModelError


def build(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, depth=2, embed_dim=64, num_heads=4,
                             **kw).eval()


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_radio_layout_has_cls_then_registers_and_follows_the_input_size():
    model = build("naflexvit_base_patch16_radio_v3", img_size=48)
    x = torch.randn(1, 3, 48, 80, generator=torch.Generator().manual_seed(0))  # not the built size
    with torch.no_grad(), vitlens.capture(model) as cache:
        y = model(x)
    assert torch.equal(y, model(x))
    layout = cache.layout
    assert layout.prefix_names == ("cls",) + ("reg",) * 7
    assert layout.grid_size == (3, 5) and layout.patch_size == (16, 16)
    assert cache.attention(0).shape == (1, 4, 8 + 15, 8 + 15)
    r = vitlens.rollout(cache)
    assert r.shape == (1, 3, 5) and torch.allclose(r.sum((1, 2)), torch.ones(1))


def test_map_pool_head_keys_are_the_patch_tokens():
    model = build("naflexvit_base_patch16_map", img_size=48)  # one register, stripped before the pool
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(torch.randn(2, 3, 48, 48))
    spec = cache.spec(-1)
    assert (spec.hook_point, spec.kind, spec.num_queries, spec.num_keys, spec.key_prefix) == \
        ("attn_pool", "pool", 1, 9, 0)
    assert cache.attention(-1).shape == (2, 4, 1, 9)


def test_naflex_mode_is_refused_with_the_reason_and_leaks_nothing():
    model = build("naflexvit_base_patch16_gap", img_size=48)
    x = torch.randn(2, 3, 48, 48)
    patches, (gh, gw) = timm.models.naflexvit.batch_patchify(x, (16, 16))
    coord = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1).reshape(1, -1, 2)
    coord = coord.expand(2, -1, -1)
    valid = torch.ones(2, gh * gw, dtype=torch.bool)
    valid[1, -3:] = False  # the second image is shorter: padded and masked
    before = _hooks(model)
    model(patches, patch_coord=coord, patch_valid=valid)  # the model itself accepts it
    for call in (lambda: model(patches, patch_coord=coord, patch_valid=valid),
                 lambda: model({"patches": patches, "patch_coord": coord, "patch_valid": valid})):
        with pytest.raises(UnsupportedModelError, match="NaFlex mode .* refused.*\\[B, C, H, W\\]"):
            with torch.no_grad(), vitlens.capture(model):
                call()
    assert _hooks(model) == before
    with torch.no_grad(), vitlens.capture(model) as cache:  # the standard path still works afterwards
        model(x)
    assert cache.attention(1).shape == (2, 4, 13, 13)


def test_token_dropping_is_refused():
    model = build("naflexvit_base_patch16_gap", img_size=48)
    with pytest.raises(UnsupportedModelError, match="token dropping"):
        adapter_for(model).forward_kept(torch.randn(1, 3, 48, 48), torch.zeros(1, 2, dtype=torch.long))
