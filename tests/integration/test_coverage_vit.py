"""VisionTransformer extras (issue #11 a): parallel blocks, SigLIP/MAP attention-pool heads,
hybrid (ResNet-stem) embeddings, post-norm blocks, differential parallel blocks.

The oracle tests (test_oracle.py) check every recorded layer against the model's own
softmax; these check what the analyses do with the new layer kinds, against references
computed here from the model's weights."""
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


def test_map_pool_head_is_an_extra_pool_layer_that_reproduces_the_pooled_output():
    model = build("vit_base_patch16_siglip_224", img_size=48, depth=2, embed_dim=64, num_heads=4)
    x = torch.randn(2, 3, 48, 48)
    seen = {}
    model.attn_pool.register_forward_hook(lambda m, a, o: seen.update(inp=a[0]))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    spec = cache.spec(-1)
    assert (spec.hook_point, spec.kind, spec.num_queries, spec.num_keys, spec.query_grid) == \
        ("attn_pool", "pool", 1, 9, None)
    a = cache.attention(-1)
    assert a.shape == (2, 4, 1, 9)
    # independent reference: the head's value vectors from its kv weights, then its own output path
    pool = model.attn_pool
    tokens = seen["inp"]
    v = pool.kv(tokens).reshape(2, 9, 2, 4, 16).permute(2, 0, 3, 1, 4)[1]
    y = (a @ v).transpose(1, 2).reshape(2, 1, 64)
    y = pool.proj(y)
    y = (y + pool.mlp(pool.norm(y)))[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(y, pool(tokens), atol=1e-5, rtol=1e-4)
    # token analyses refuse the pool layer and work on the blocks
    with pytest.raises(ValueError, match="attn_pool.*pool attention with 1 queries"):
        vitlens.rollout(cache)
    with pytest.raises(ValueError, match="pool"):
        vitlens.mean_attention_distance(cache, layers=[-1])
    with torch.no_grad(), vitlens.capture(model, layers=[0, 1]) as blocks:
        model(x)
    r = vitlens.rollout(blocks)
    assert r.shape == (2, 3, 3) and torch.allclose(r.sum((1, 2)), torch.ones(2))


def test_rows_prefix_is_refused_for_a_latent_pool_layer():
    model = build("vit_base_patch16_224", img_size=48, depth=2, embed_dim=64, num_heads=4, class_token=False,
                  reg_tokens=1, global_pool="map", pool_include_prefix=True)
    with pytest.raises(ValueError, match="attn_pool.*learned latents"):
        with vitlens.capture(model, rows="prefix"):
            pass
    with torch.no_grad(), vitlens.capture(model, rows="prefix", layers=[0, 1]) as cache:
        model(torch.randn(1, 3, 48, 48))
    assert cache.attention(0).shape == (1, 4, 1, 10)
    d = adapter_for(model).describe()
    assert (d.layers[-1].num_keys, d.layers[-1].key_prefix) == (10, 1)  # keys include the register


def test_parallel_branches_are_recorded_and_rollout_refuses_them():
    model = build("vit_small_patch16_18x2_224", img_size=48, depth=2, embed_dim=64, num_heads=2)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    assert list(cache.hook_points.values()) == ["blocks.0.attns.0.attn", "blocks.0.attns.1.attn",
                                                "blocks.1.attns.0.attn", "blocks.1.attns.1.attn"]
    assert [cache.spec(i).branch_of for i in range(4)] == [0, 0, 2, 2]
    with pytest.raises(ValueError, match="parallel attention branch"):
        vitlens.rollout(cache)
    m = vitlens.cls_attention(cache, layer=1)  # per-layer maps are defined
    torch.testing.assert_close(m.reshape(2, -1), cache.attention(1)[:, :, 0, 1:].mean(1))


def test_hybrid_embedding_has_the_effective_stride():
    model = build("vit_tiny_r_s16_p8_224", img_size=64, depth=2)
    layout = adapter_for(model).layout_for((64, 64))
    # the ResNet stem reduces 4x, then the projection takes 8x8 feature patches: 32 px per token
    assert layout.patch_size == (32, 32) and layout.grid_size == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    with torch.no_grad():
        feat = model.patch_embed.backbone(x)
        feat = feat[-1] if isinstance(feat, (list, tuple)) else feat
    assert tuple(feat.shape[-2:]) == (16, 16)  # measured: 64 / 4, and 16 / 8 = 2 tokens per side
    a = cache.attention(0)[0, :, 1:, 1:].float()
    w = a / a.sum(-1, keepdim=True)
    c = torch.tensor([[16.0, 16], [16, 48], [48, 16], [48, 48]])
    dist = torch.cdist(c, c)
    want = (w * dist).sum(-1).mean(-1)
    got = vitlens.mean_attention_distance(cache, layers=[0])[0, 0]
    torch.testing.assert_close(got.float(), want, atol=1e-4, rtol=1e-4)


def test_differential_parallel_blocks_are_refused_with_the_reason():
    with torch.device("meta"):
        model = timm.create_model("vit_dpwee_patch16_reg1_gap_256", pretrained=False)
    with pytest.raises(UnsupportedModelError, match="parallel block with differential attention"):
        adapter_for(model)


def test_post_norm_blocks_read_gradcam_at_the_block_input():
    model = build("vit_base_patch16_rpn_224", img_size=48, depth=2, embed_dim=64, num_heads=4)
    assert adapter_for(model).gradcam_points() == (("norm_pre", "blocks.0"), "tokens")


def test_relpos_records_the_bias_and_analyses_run_on_it():
    model = build("vit_relpos_medium_patch16_cls_224", img_size=48, depth=2, embed_dim=64, num_heads=2)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    assert cache.family == "VisionTransformerRelPos" and cache.layout.prefix_names == ("cls",)
    # the bias changes the probabilities: they differ from softmax(q k^T * scale) without it
    attn = model.blocks[0].attn
    tokens = {}
    model.blocks[0].attn.register_forward_pre_hook(lambda m, a: tokens.update(x=a[0]))
    with torch.no_grad():
        model(x)
        q, k, _ = attn.qkv(tokens["x"]).reshape(2, 10, 3, 2, 32).permute(2, 0, 3, 1, 4)
        plain = (q * attn.scale @ k.transpose(-2, -1)).softmax(-1)
        bias = attn.rel_pos.get_bias()
        torch.testing.assert_close(cache.attention(0), (q * attn.scale @ k.transpose(-2, -1) + bias).softmax(-1),
                                   atol=1e-5, rtol=0)
    assert not torch.allclose(cache.attention(0), plain, atol=1e-4)
    assert vitlens.rollout(cache).shape == (2, 3, 3)
    with pytest.raises(UnsupportedModelError, match="relative position bias"):
        adapter_for(model).forward_kept(x, torch.zeros(2, 4, dtype=torch.long))


def test_batch_plan_leaves_out_analyses_the_pool_layer_cannot_feed():
    from vitlens.batch import ExportOptions, plan_analyses
    from vitlens.errors import VitlensError

    model = build("vit_base_patch16_siglip_224", img_size=48, depth=2, embed_dim=64, num_heads=4)
    plan = plan_analyses(model, ExportOptions())
    assert "rollout" not in plan.analyses and "distance" not in plan.analyses and "logits" in plan.analyses
    with pytest.raises(VitlensError, match="'rollout'.*attn_pool.*pool attention"):
        plan_analyses(model, ExportOptions(analyses=("rollout",)))
