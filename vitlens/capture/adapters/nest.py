"""timm NesT (``timm.models.nest.Nest``, ``nest_*``, ``jx_nest_*``): self-attention inside
non-overlapping image blocks, nested levels joined by conv + max-pool aggregation.

Layer ``l`` is ``levels.{i}.transformer_encoder.{j}.attn`` in forward order. Level 0's grid is
the patch embedding's; each later level pools it by 2 (``ConvPool``). Every level cuts its grid
into ``block_size x block_size`` blocks (``blockify``: row-major blocks, row-major positions;
4^(L-1-i) blocks at level i).

Hook point ``levels.{i}.transformer_encoder.{j}.attn`` (``Attention``; B batch, h heads, block
``b``): timm computes ``[B, h, T, b², b²]`` (heads before blocks); recorded as
``[B, T, h, b², b²]``, kind ``"window"`` (block ``(r, c)`` position ``i * b + j`` is level
token ``(r*b + i, c*b + j)``; no shift, no padding). Level grids change, so these are not Swin
:class:`WindowLayout` s; token-level analyses refuse them. Mechanism: ``tap.py``.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.nest"


@register_adapter
class NestAdapter(TapAdapter):
    family = "NesT"
    examples = ("nest_tiny", "jx_nest_base")
    timm_modules = ("nest",)
    model_classes = (f"{_M}:Nest",)
    attention_classes = (f"{_M}:Attention",)
    windows_heads_first = True
    test_models = (("nest_tiny", dict(img_size=32, patch_size=2)),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"levels.{i}.transformer_encoder.{j}.attn", t.attn)
                for i, lv in enumerate(model.levels) for j, t in enumerate(lv.transformer_encoder)]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.patch_embed.img_size)

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        p = pair(self.model.patch_embed.patch_size)
        h, w = image_hw[0] // p[0], image_hw[1] // p[1]
        stride, out = p[0], []
        for i, lv in enumerate(self.model.levels):
            if not isinstance(lv.pool, nn.Identity):
                h, w, stride = h // 2, w // 2, stride * 2
            b = int(lv.block_size)
            n = (h // b) * (w // b)
            out += [LayerGeo("window", b * b, b * b, (h, w), (h, w), (stride, stride), i, windows=n)
                    for _ in lv.transformer_encoder]
        return out
