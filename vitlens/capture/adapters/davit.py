"""timm DaViT (``timm.models.davit.DaVit``, ``davit_*``): alternating spatial-window attention and
channel attention. Only the spatial-window layers are recorded.

Each stage's blocks are pairs ``stages.{s}.blocks.{j}.spatial_block`` then
``.channel_block``. The channel block's ``ChannelAttention`` (``ChannelAttentionV2``) is a
softmax over *channels* (a ``d x d`` matrix per head / group, Ding et al. 2022): not a
weighting of tokens, so there is nothing to record as token attention; those layers are
skipped (not numbered), and every analysis runs on the spatial layers alone. Layer ``l`` is
the ``l``-th ``stages.{s}.blocks.{j}.spatial_block.attn`` in forward order.

Hook point ``...spatial_block.attn`` (``WindowAttention``; B batch, h heads): the stage
grid ``(H_s, W_s)`` (stem ``ceil(H / 4)``, then ``ceil(/2)`` per stage) is zero-padded at the
bottom/right to multiples of the window ``ws`` and cut into ``ws x ws`` windows, row-major;
self-attention inside each window (no shift, no relative position bias; padded positions
are attended as keys, timm does not mask them). Recorded ``[B, nW, h, ws², ws²]``, kind
``"window"``; window ``(a, b)`` position ``i * ws + j`` is stage token ``(a*ws + i, b*ws + j)``.
These are not Swin :class:`WindowLayout` s (padding attended, channel layers between), so the
token-level analyses refuse them with the reason. Mechanism: ``tap.py``.
"""
from __future__ import annotations

import math

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.davit"
_CHANNEL = (f"{_M}:ChannelAttention", f"{_M}:ChannelAttentionV2")


@register_adapter
class DaVitAdapter(TapAdapter):
    family = "DaViT"
    examples = ("davit_tiny", "davit_small")
    timm_modules = ("davit",)
    model_classes = (f"{_M}:DaVit",)
    attention_classes = (f"{_M}:WindowAttention",)
    test_models = (("davit_tiny", dict(depths=(1, 1), embed_dims=(16, 32), num_heads=(2, 4), window_size=3)),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        from . import class_path

        out = []
        for s, st in enumerate(model.stages):
            for j, pair_ in enumerate(st.blocks):
                for name, blk in pair_.named_children():
                    p = f"stages.{s}.blocks.{j}.{name}"
                    if type(blk).__name__ == "SpatialBlock":
                        out.append((f"{p}.attn", blk.attn))
                    elif type(blk).__name__ != "ChannelBlock" or class_path(blk.attn) not in _CHANNEL:
                        raise TypeError(f"{p} is {type(blk).__name__} with {type(getattr(blk, 'attn', None)).__name__}, "
                                        f"not a DaViT block vitlens knows")
        return out

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        h, w = -(-image_hw[0] // 4), -(-image_hw[1] // 4)
        stride = 4
        out = []
        for s, st in enumerate(self.model.stages):
            if not isinstance(st.downsample, nn.Identity):
                h, w, stride = -(-h // 2), -(-w // 2), stride * 2
            for pair_ in st.blocks:
                for blk in pair_.children():
                    if type(blk).__name__ == "SpatialBlock":
                        wh, ww = pair(blk.window_size)
                        nw = math.ceil(h / wh) * math.ceil(w / ww)
                        out.append(LayerGeo("window", wh * ww, wh * ww, (h, w), (h, w), (stride, stride), s,
                                            windows=nw))
        return out
