"""timm PiT (``timm.models.pit.PoolingVisionTransformer``, ``pit_*``): ViT blocks in stages with a
depth-wise strided conv pooling between them; the class token(s) go through a linear layer.

Layer ``l`` is ``transformers.{s}.blocks.{j}.attn`` (timm ``Attention``, fused) in forward
order. Stage 0's grid is the patch embedding's (``patch_embed.conv``: patch 16, stride 8,
overlapping); each later stage's is its ``pool.conv``'s output (stride 2).

Hook point ``transformers.{s}.blocks.{j}.attn``: self-attention over ``[cls (, dist), grid_s]``,
recorded ``[B, h, P + N_s, P + N_s]``, kind ``"self"``, prefix ``("cls",)`` or
``("cls", "dist")`` (``pit_*_distilled_*``). Stride in input pixels: 8, 16, 32 (token
centres on the layout are at ``(i + 0.5) * 8``, 4 px from the true centre of the
overlapping 16-px patch; distances between tokens are unaffected). Token-level analyses
work on stage 0's layers and refuse the pooled stages (rollout refuses: the grid changes).
Mechanism: ``tap.py``.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, conv_out, pair


@register_adapter
class PitAdapter(TapAdapter):
    family = "PiT"
    examples = ("pit_s_224", "pit_ti_distilled_224")
    timm_modules = ("pit",)
    model_classes = ("timm.models.pit:PoolingVisionTransformer",)
    attention_classes = ("timm.layers.attention:Attention",)
    test_models = (("pit_ti_224", dict(img_size=64, depth=[1, 1], heads=[2, 2], base_dims=[8, 8])),
                   ("pit_ti_distilled_224", dict(img_size=64, depth=[1, 1, 1], heads=[2, 2, 2], base_dims=[8, 8, 8])))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"transformers.{s}.blocks.{j}.attn", b.attn)
                for s, t in enumerate(model.transformers) for j, b in enumerate(t.blocks)]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.patch_embed.img_size)

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls", "dist")[: int(self.model.num_tokens)]

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        conv = self.model.patch_embed.conv
        hw, stride = conv_out(image_hw, conv), pair(conv.stride)
        P = int(self.model.num_tokens)
        out = []
        for s, t in enumerate(self.model.transformers):
            if t.pool is not None:
                hw = conv_out(hw, t.pool.conv)
                k = pair(t.pool.conv.stride)
                stride = (stride[0] * k[0], stride[1] * k[1])
            n = P + hw[0] * hw[1]
            out += [LayerGeo("self", n, n, hw, hw, stride, s, P, P) for _ in t.blocks]
        return out
