"""timm CrossViT (``timm.models.crossvit.CrossVit``, ``crossvit_*``): two branches of ViT blocks
(small and large patches) joined by cross-attention of each branch's CLS token.

Branch ``b`` sees the input resized to ``img_size_scaled[b]`` and cut into patches of
``patch_size[b]``: tokens ``[cls, grid_b]`` with ``grid_b = img_size_scaled[b] // patch_b``.
Layers in forward order, per multi-scale block ``k``:

- ``blocks.{k}.blocks.{b}.{j}.attn`` (timm ``Attention``, fused): branch ``b``'s
  self-attention over ``1 + N_b`` tokens, recorded ``[B, h, 1 + N_b, 1 + N_b]``, kind
  ``"self"`` (query/key grid ``grid_b``, prefix ``("cls",)``);
- ``blocks.{k}.fusion.{b}.attn`` (``CrossAttention``, also ``.fusion.{b}.{t}.attn`` when the
  fusion is a stack): the CLS of branch ``b`` (projected to branch ``b' = (b + 1) % 2``'s
  width) queries ``[that CLS, branch b' patch tokens]``: recorded ``[B, h, 1, 1 + N_b']``,
  kind ``"class"`` (one query, keys on ``grid_b'`` after one prefix token).

The cache's layout is branch 0 (input pixels per token = its patch size when that branch
sees the input unscaled). Token-level analyses work on branch 0's self-attention layers and
refuse the others: branch 1 sits on another grid of a resized input, the cross-attention
has one query. Mechanism: ``tap.py`` (SDPA recompute for the fused ViT blocks, the softmax
the model multiplies with v for the cross-attention, which has no fused path).
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.crossvit"


@register_adapter
class CrossVitAdapter(TapAdapter):
    family = "CrossViT"
    examples = ("crossvit_tiny_240", "crossvit_15_dagger_240")
    timm_modules = ("crossvit",)
    model_classes = (f"{_M}:CrossVit",)
    attention_classes = ("timm.layers.attention:Attention", f"{_M}:CrossAttention")
    test_models = (("crossvit_tiny_240", dict(img_size=120, embed_dim=[24, 48], depth=[[1, 1, 0], [1, 1, 0]],
                                              num_heads=[2, 2])),
                   ("crossvit_15_dagger_240", dict(img_size=120, embed_dim=[24, 48], depth=[[1, 1, 1]],
                                                   num_heads=[2, 2])))

    @classmethod
    def _layers(cls, model: nn.Module) -> list[tuple[str, nn.Module, str, int]]:
        out = []
        for k, msb in enumerate(model.blocks):
            for b, seq in enumerate(msb.blocks or []):
                out += [(f"blocks.{k}.blocks.{b}.{j}.attn", blk.attn, "self", b) for j, blk in enumerate(seq)]
            for b, f in enumerate(msb.fusion):
                if type(f).__name__ == "CrossAttentionBlock":
                    out.append((f"blocks.{k}.fusion.{b}.attn", f.attn, "class", b))
                else:
                    out += [(f"blocks.{k}.fusion.{b}.{t}.attn", blk.attn, "class", b) for t, blk in enumerate(f)]
        return out

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(p, m) for p, m, *_ in cls._layers(model)]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.img_size)

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",)

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        grids, strides = [], []
        for size, pe in zip(self.model.img_size_scaled, self.model.patch_embed):
            p = pair(pe.patch_size)
            g = (size[0] // p[0], size[1] // p[1])
            grids.append(g)
            exact = image_hw[0] % g[0] == 0 and image_hw[1] % g[1] == 0
            strides.append((image_hw[0] // g[0], image_hw[1] // g[1]) if exact else None)
        out = []
        nb = len(grids)
        for _p, _m, kind, b in self._layers(self.model):
            if kind == "self":
                n = 1 + grids[b][0] * grids[b][1]
                out.append(LayerGeo("self", n, n, grids[b], grids[b], strides[b], b, 1, 1))
            else:
                o = (b + 1) % nb
                out.append(LayerGeo("class", 1, 1 + grids[o][0] * grids[o][1], None, grids[o], strides[o], o, 1, 1))
        return out
