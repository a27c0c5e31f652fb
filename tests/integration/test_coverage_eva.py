"""Eva models built on ``timm.layers.attention:AttentionRope`` (issue #11 a): ``vit_*_rope_*``,
Perception Encoder (with its MAP pool head) and Sapiens2 (grouped-query attention).

The oracle tests (test_oracle.py) check every recorded layer against the model's own
softmax; these check the pool head against its own output path, the grouped-query heads,
and what the token analyses do."""
from __future__ import annotations

import pytest
import timm
import torch

import vitlens
from vitlens.capture.adapters import adapter_for
from vitlens.errors import UnsupportedModelError


def build(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()


def test_pe_pool_head_attends_over_every_token_and_reproduces_the_pooled_output():
    model = build("vit_pe_core_tiny_patch16_384", img_size=48, depth=2)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    seen = {}
    model.attn_pool.register_forward_hook(lambda m, a, o: seen.update(inp=a[0], out=o))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    spec = cache.spec(-1)
    # Eva hands the pool its whole sequence: CLS + 3x3 patches
    assert (spec.hook_point, spec.kind, spec.num_queries, spec.num_keys, spec.key_prefix) == \
        ("attn_pool", "pool", 1, 10, 1)
    a = cache.attention(-1)
    assert a.shape == (2, 8, 1, 10)
    pool, tokens = model.attn_pool, seen["inp"]
    C, H = tokens.shape[-1], 8
    with torch.no_grad():
        v = pool.kv(tokens).reshape(2, 10, 2, H, C // H).permute(2, 0, 3, 1, 4)[1]
        y = pool.proj((a @ v).transpose(1, 2).reshape(2, 1, C))
        y = (y + pool.mlp(pool.norm(y)))[:, 0]
    torch.testing.assert_close(y, seen["out"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="pool"):
        vitlens.rollout(cache)
    with pytest.raises(ValueError, match="learned latents"):
        with vitlens.capture(model, rows="prefix"):
            pass


def test_rope_vit_blocks_feed_the_token_analyses():
    model = build("vit_small_patch16_rope_224", img_size=48, depth=2, embed_dim=64, num_heads=4)
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    assert cache.family == "EVA" and cache.attention(0).shape == (1, 4, 10, 10)
    r = vitlens.rollout(cache)
    assert r.shape == (1, 3, 3) and torch.allclose(r.sum((1, 2)), torch.ones(1))
    cls = vitlens.cls_attention(cache)
    assert cls.shape[-2:] == (3, 3)
    with pytest.raises(UnsupportedModelError, match="token dropping"):
        adapter_for(model).forward_kept(x, torch.zeros(1, 2, dtype=torch.long))


def test_grouped_query_heads_are_the_query_heads():
    """Sapiens2 with 2 kv heads for 4 query heads: four recorded heads, pairs sharing keys still differ."""
    model = build("vit_base_patch16_sapiens2", img_size=48, depth=2, embed_dim=64, num_heads=4, num_kv_heads=2)
    assert model.blocks[0].attn.num_kv_groups == 2
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    a = cache.attention(0)
    assert a.shape == (1, 4, 18, 18)  # CLS + 8 registers + 3x3 patches
    assert not torch.allclose(a[:, 0], a[:, 1])
    with torch.no_grad(), vitlens.capture(model, heads=[1, 3]) as some:
        model(x)
    torch.testing.assert_close(some.attention(0), a[:, [1, 3]])
