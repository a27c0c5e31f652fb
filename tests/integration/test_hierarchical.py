"""Hierarchical and hybrid families (tap.py adapters): what the LayerSpecs say about query and key
grids, that token-level analyses work on layers over the input's token layout and refuse the
others with the reason, and that the unfused path refuses a softmax the model changes
before multiplying it with v."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vitlens
from vitlens.capture.adapters import adapter_for
from vitlens.errors import UnsupportedModelError


def build(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=4, **kw).eval()


@pytest.fixture(scope="module")
def pvt():
    return build("pvt_v2_b0", embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))


@pytest.fixture(scope="module")
def maxvit():
    return build("maxvit_tiny_tf_224", img_size=64, embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"),
                 transformer_dim_head=8, stem_width=8)


@pytest.fixture(scope="module")
def crossvit():
    return build("crossvit_tiny_240", img_size=120, embed_dim=[24, 48], depth=[[1, 1, 0]], num_heads=[2, 2])


def run(model, **kw):
    h, w = adapter_for(model).default_input_size()
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), vitlens.capture(model, **kw) as cache:
        model(x)
    return cache


def test_spatial_reduction_keys_sit_on_a_coarser_grid(pvt):
    d = adapter_for(pvt).describe((224, 224))
    first, last = d.layers[0], d.layers[-1]
    assert (first.query_grid, first.key_grid, first.stride) == ((56, 56), (7, 7), (4, 4))  # sr 8
    assert (first.num_queries, first.num_keys, first.shape) == (3136, 49, "[B, H, Tq, Tk]")
    assert last.query_grid == last.key_grid == (7, 7) and last.stride == (32, 32)
    assert not first.square and d.layout.grid_size == (56, 56) and d.layout.num_prefix_tokens == 0
    cache = run(pvt)
    assert cache.attention(0).shape == (2, 1, 3136, 49)


@pytest.mark.parametrize("analysis", [lambda c: vitlens.rollout(c), lambda c: vitlens.cls_attention(c, 0),
                                      lambda c: vitlens.mean_attention_distance(c)])
def test_token_analyses_refuse_spatial_reduction_and_windows(pvt, maxvit, analysis):
    for model in (pvt, maxvit):
        cache = run(model)
        with pytest.raises(ValueError, match="square token self-attention over the input's token layout"):
            analysis(cache)


def test_maxvit_block_and_grid_partitions(maxvit):
    d = adapter_for(maxvit).describe()
    assert [s.kind for s in d.layers] == ["window", "grid", "window", "grid"]
    assert not d.windowed  # no Swin WindowLayout: the grid partition is dilated
    s = d.layers[1]
    assert (s.num_queries, s.query_grid, s.shape) == (4, (16, 16), "[B, nW, H, n, n]")
    cache = run(maxvit)
    assert cache.attention(1).shape == (2, 64, 2, 4, 4)
    # the grid partition of a 16x16 stage grid with a 2x2 grid: partition (a, b) holds tokens (8i + a, 8j + b)
    torch.testing.assert_close(cache.attention(1).sum(-1), torch.ones(2, 64, 2, 4))


def test_crossvit_branch_zero_is_the_layout_and_cross_attention_is_refused(crossvit):
    cache = run(crossvit)
    d = cache.description
    kinds = [(s.hook_point, s.kind, s.num_queries, s.num_keys) for s in d.layers]
    assert kinds == [("blocks.0.blocks.0.0.attn", "self", 101, 101), ("blocks.0.blocks.1.0.attn", "self", 50, 50),
                     ("blocks.0.fusion.0.attn", "class", 1, 50), ("blocks.0.fusion.1.attn", "class", 1, 101)]
    assert d.layers[2].key_grid == (7, 7) and d.layers[3].key_grid == (10, 10)
    # branch 0's self-attention is on the input layout: its CLS map is the CLS row over the patches
    a = cache.attention(0)
    torch.testing.assert_close(vitlens.cls_attention(cache, 0, head=0), a[:, 0, 0, 1:].reshape(2, 10, 10))
    for layer in (1, 2, 3):
        with pytest.raises(ValueError, match=f"layer {layer} .* is (self|class) attention"):
            vitlens.cls_attention(cache, layer)
    with pytest.raises(ValueError, match="square token self-attention"):
        vitlens.rollout(cache)
    prefix = run(crossvit, rows="prefix")
    torch.testing.assert_close(prefix.attention(0), a[:, :, :1])
    torch.testing.assert_close(prefix.attention(2), cache.attention(2))


def test_analyses_work_on_the_first_stage_of_levit():
    model = build("levit_128s", img_size=64, embed_dim=(16, 32), key_dim=8, num_heads=(2, 2), depth=(1, 1))
    cache = run(model)
    d = cache.description
    assert [s.on_layout(d.layout) for s in d.layers] == [True, False, False]
    assert d.layers[1].query_grid == (2, 2) and d.layers[1].key_grid == (4, 4)
    dist = vitlens.mean_attention_distance(cache, layers=[0])
    # reference: 16x16-px tokens on a 4x4 grid, attention-weighted Euclidean distance averaged over queries
    a = cache.attention(0).float()
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    c = torch.stack([ys.flatten(), xs.flatten()], 1) * 16
    ref = (a * torch.cdist(c, c)).sum(-1).mean(-1)
    torch.testing.assert_close(dist[:, 0].float(), ref)
    with pytest.raises(ValueError, match="square token self-attention"):
        vitlens.mean_attention_distance(cache, layers=[1])


class _Halve(nn.Module):
    def forward(self, x):
        return x * 0.5


def test_a_softmax_changed_before_v_is_refused_on_the_unfused_path(pvt):
    attn = pvt.stages[0].blocks[0].attn
    old = attn.attn_drop
    attn.attn_drop = _Halve()
    try:
        with pytest.raises(UnsupportedModelError, match="did not multiply an unchanged softmax"):
            with vitlens.capture(pvt, grad=True):  # grad=True runs the unfused path
                pvt(torch.randn(1, 3, 224, 224))
    finally:
        attn.attn_drop = old


def test_models_without_token_attention_are_refused_with_the_reason():
    with torch.device("meta"):
        fast = timm.create_model("fastvit_t8", pretrained=False)
    with pytest.raises(UnsupportedModelError, match="RepMixer.*no attention"):
        adapter_for(fast)


def test_davit_records_the_spatial_windows_and_skips_channel_attention():
    model = build("davit_tiny", depths=(1, 1), embed_dims=(16, 32), num_heads=(2, 4), window_size=3)
    d = adapter_for(model).describe((64, 64))
    assert [s.hook_point for s in d.layers] == ["stages.0.blocks.0.0.attn", "stages.1.blocks.0.0.attn"]
    assert [(s.kind, s.num_queries, s.query_grid) for s in d.layers] == [("window", 9, (16, 16)),
                                                                        ("window", 9, (8, 8))]
