"""SAM ViT: windowed and global blocks recorded as windows over the NHWC grid."""
from __future__ import annotations

import timm
import torch

import vitlens


def test_windowed_and_global_blocks_and_the_analyses():
    torch.manual_seed(0)
    model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=5, img_size=64, depth=3,
                              embed_dim=64, num_heads=2, window_size=3, global_attn_indexes=(1,),
                              neck_chans=16).eval()
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    model.blocks[1].attn.register_forward_hook(lambda m, a, o: seen.update(inp=a[0], out=o))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    w0, g = cache.layout_of(0), cache.layout_of(1)
    # 4 x 4 grid, 3 x 3 windows: padded to 6 x 6, 4 windows; the global block: one 4 x 4 window
    assert (w0.window_size, w0.num_windows, w0.padded_size) == ((3, 3), 4, (6, 6))
    assert (g.window_size, g.num_windows) == ((4, 4), 1)
    assert cache.attention(0).shape == (2, 4, 2, 9, 9) and cache.attention(1).shape == (2, 1, 2, 16, 16)
    # the global block's weights reproduce its output from its own v (NHWC in, NHWC out)
    attn = model.blocks[1].attn
    with torch.no_grad():
        t = seen["inp"].reshape(2, 16, -1)
        v = attn.qkv(t).reshape(2, 16, 3, 2, -1).permute(2, 0, 3, 1, 4)[2]
        y = attn.proj((cache.dense_attention(1) @ v).transpose(1, 2).reshape(2, 16, -1)).reshape(2, 4, 4, -1)
    torch.testing.assert_close(y, seen["out"], atol=1e-5, rtol=1e-4)
    # a windowed block in grid coordinates: zero between windows, rows sum to 1 minus the padding mass
    d0 = cache.dense_attention(0)
    assert d0.shape == (2, 2, 16, 16)
    outside = torch.ones(16, dtype=torch.bool)
    outside[[0, 1, 2, 4, 5, 6, 8, 9, 10]] = False  # token (0,0)'s window: rows 0..2, columns 0..2
    assert d0[:, :, 0, outside].abs().sum() == 0 and d0[:, :, 0, ~outside].min() > 0
    r = vitlens.rollout(cache)
    assert r.shape == (2, 4, 4) and torch.allclose(r.sum((1, 2)), torch.ones(2))
    dist = vitlens.mean_attention_distance(cache)
    assert dist.shape == (2, 3, 2) and torch.isfinite(dist).all()
