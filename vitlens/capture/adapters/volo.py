"""timm VOLO (``timm.models.volo.VOLO``, ``volo_*``): outlook attention, then self-attention
stages, then class attention. The outlook-attention layers are skipped; the others are recorded.

``Outlooker`` blocks (first stage) use outlook attention (Yuan et al. 2021): each token's
``K x K`` neighbourhood weights are *predicted from that token alone* by a linear layer and
softmaxed over the ``K²`` window positions, then folded back: not a query-key softmax over
tokens, and the weights a token's value receives come from several overlapping windows, so
vitlens does not record them (skipped, not numbered).

Recorded layers, in forward order (B batch, h heads, grid ``(H, W)`` = the position-embedding
grid, input / 16 for the standard ``patch_size=8`` + one 2x downsample):

- ``network.{k}.{j}.attn`` (``Attention`` of the ``Transformer`` stages; fused path
  recomputed from its ``scaled_dot_product_attention`` call): self-attention over the
  ``H * W`` tokens (NHWC, row-major, no prefix), recorded ``[B, h, N, N]``, kind ``"self"``;
  these layers are on the cache's :class:`TokenLayout`, so token-level analyses work on them;
- ``post_network.{i}.attn`` (``ClassAttention``, no fused path): the class token queries
  ``[cls, N tokens]``, recorded ``[B, h, 1, 1 + N]``, kind ``"class"`` (token-level analyses
  refuse these layers; rollout therefore refuses the model).

Mechanism: ``tap.py``.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.volo"


@register_adapter
class VoloAdapter(TapAdapter):
    family = "VOLO (self and class attention)"
    examples = ("volo_d1_224", "volo_d5_512")
    timm_modules = ("volo",)
    model_classes = (f"{_M}:VOLO",)
    attention_classes = (f"{_M}:Attention", f"{_M}:ClassAttention")
    test_models = (("volo_d1_224", dict(img_size=64, pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))),)

    @classmethod
    def _layers(cls, model: nn.Module) -> list[tuple[str, nn.Module, str]]:
        out = []
        for k, stage in enumerate(model.network):
            name = type(stage).__name__
            if name == "Downsample":
                continue
            for j, blk in enumerate(stage):
                bname = type(blk).__name__
                if bname == "Transformer":
                    out.append((f"network.{k}.{j}.attn", blk.attn, "self"))
                elif bname != "Outlooker":
                    raise TypeError(f"network.{k}.{j} is a {bname}, a block vitlens does not know")
        for i, blk in enumerate(model.post_network or []):
            out.append((f"post_network.{i}.attn", blk.attn, "class"))
        return out

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(p, m) for p, m, _ in cls._layers(model)]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])

    def layout_for(self, image_hw):
        from ..cache import TokenLayout

        g = self._geo(pair(image_hw))[0]
        grid = g.query_grid or g.key_grid
        return TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=grid, patch_size=g.stride,
                           input_size=pair(image_hw))

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        pe = self.model.pos_embed
        h, w = int(pe.shape[1]), int(pe.shape[2])
        stride = (image_hw[0] // h, image_hw[1] // w)
        out = []
        for _p, _m, kind in self._layers(self.model):
            if kind == "self":
                out.append(LayerGeo("self", h * w, h * w, (h, w), (h, w), stride, 0))
            else:
                out.append(LayerGeo("class", 1, 1 + h * w, None, (h, w), stride, 0, 1, 1))
        return out
