"""timm TinyViT (``timm.models.tiny_vit.TinyVit``, ``tiny_vit_*``): a convolutional first stage,
then window attention with a learned per-head position bias.

Layer ``l`` is ``stages.{s}.blocks.{j}.attn`` (``Attention``) for ``s >= 1`` in forward order.
Stage grids: the patch embedding (two stride-2 3x3 convs: ``ceil(H / 4)``), then each
attention stage's ``PatchMerging`` (stride-2 conv, ``ceil(/2)``) before its blocks.

Hook point ``stages.{s}.blocks.{j}.attn`` (B batch, h heads, window ``ws``): the block
zero-pads the stage grid at the bottom/right to multiples of ``ws`` and cuts it into
``ws x ws`` windows, row-major (one window, no padding, when the grid is exactly ``ws``);
the module normalises its input and computes ``softmax(q·kᵀ·scale + bias)`` inside each
window, padded positions included as keys (not masked). Recorded ``[B, nW, h, ws², ws²]``,
kind ``"window"``; window ``(a, b)`` position ``i * ws + j`` is stage token
``(a*ws + i, b*ws + j)``. No shift, but padding is attended: not a Swin :class:`WindowLayout`,
so token-level analyses refuse these layers. Mechanism: ``tap.py``.
"""
from __future__ import annotations

import math

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.tiny_vit"


@register_adapter
class TinyVitAdapter(TapAdapter):
    family = "TinyViT"
    examples = ("tiny_vit_5m_224", "tiny_vit_21m_512")
    timm_modules = ("tiny_vit",)
    model_classes = (f"{_M}:TinyVit",)
    attention_classes = (f"{_M}:Attention",)
    test_models = (("tiny_vit_5m_224", dict(embed_dims=(8, 16, 32), depths=(1, 1, 2),
                                            num_heads=(1, 2, 4), window_sizes=(3, 3, 4))),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out = []
        for s, st in enumerate(model.stages):
            if type(st).__name__ == "ConvLayer":
                continue
            out += [(f"stages.{s}.blocks.{j}.attn", b.attn) for j, b in enumerate(st.blocks)]
        return out

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        h, w = image_hw
        for _ in range(2):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        stride, out = 4, []
        for s, st in enumerate(self.model.stages):
            if type(st).__name__ == "ConvLayer":
                continue
            if not isinstance(st.downsample, nn.Identity):
                h, w, stride = (h - 1) // 2 + 1, (w - 1) // 2 + 1, stride * 2
            for b in st.blocks:
                ws = int(b.window_size)
                nw = math.ceil(h / ws) * math.ceil(w / ws)
                out.append(LayerGeo("window", ws * ws, ws * ws, (h, w), (h, w), (stride, stride), s, windows=nw))
        return out
