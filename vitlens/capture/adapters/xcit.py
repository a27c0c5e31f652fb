"""timm XCiT (``timm.models.xcit.Xcit``, ``xcit_*``): only the class-attention layers are recorded.

XCiT's main blocks (``blocks.{i}``, ``XCABlock``) use cross-covariance attention
(``XCA``, El-Nouby et al. 2021): a softmax over a ``d x d`` *channel* matrix per head, which
weights feature channels, not tokens, so there is no token attention to record; those
layers are skipped (not numbered). The model then prepends a class token and runs
CaiT-style class-attention blocks, which are recorded: layer ``l`` is
``cls_attn_blocks.{l}.attn`` (timm's ``cait.ClassAttn``; fused path recomputed from the
module's own ``scaled_dot_product_attention`` call, see ``tap.py``).

Hook point ``cls_attn_blocks.{l}.attn`` (B batch, h heads, patch grid ``(Hp, Wp)`` of the
conv patch embedding, stride = patch size 8 or 16): only the class token queries, the keys
are ``[cls, Hp * Wp patches]``; recorded ``[B, h, 1, 1 + Hp*Wp]``, kind ``"class"``. The
cache's :class:`TokenLayout` is that sequence (prefix ``("cls",)``); the CLS row over the
patches is ``cache.attention(l)[:, :, 0, 1:]``. Analyses that need square token matrices
(rollout, distances) refuse class-attention layers with the reason.
"""
from __future__ import annotations

from torch import nn

from . import class_path, register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.xcit"


@register_adapter
class XcitAdapter(TapAdapter):
    family = "XCiT (class attention)"
    examples = ("xcit_nano_12_p16_224", "xcit_small_24_p8_384")
    timm_modules = ("xcit",)
    model_classes = (f"{_M}:Xcit",)
    attention_classes = ("timm.models.cait:ClassAttn",)
    test_models = (("xcit_nano_12_p16_224", dict(depth=1, cls_attn_layers=2,
                                                 pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        for i, b in enumerate(model.blocks):
            if class_path(b.attn) != f"{_M}:XCA":
                raise TypeError(f"blocks.{i}.attn is {type(b.attn).__name__}, not XCiT's XCA")
        return [(f"cls_attn_blocks.{i}.attn", b.attn) for i, b in enumerate(model.cls_attn_blocks or [])]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",)

    def layout_for(self, image_hw):
        from ..cache import TokenLayout

        g = self._geo(pair(image_hw))[0]
        return TokenLayout(num_prefix_tokens=1, prefix_names=("cls",), grid_size=g.key_grid,
                           patch_size=g.stride, input_size=pair(image_hw))

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        p = int(self.model.patch_embed.patch_size)
        # ConvPatchEmbed: log2(p) stride-2 3x3 convs with padding 1 (ceil at each)
        h, w, s = image_hw[0], image_hw[1], 1
        while s < p:
            h, w, s = (h - 1) // 2 + 1, (w - 1) // 2 + 1, s * 2
        return [LayerGeo("class", 1, 1 + h * w, None, (h, w), (p, p), 0, 1, 1) for _ in self.attention_modules()]
