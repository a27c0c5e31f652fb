"""timm Hiera (``timm.models.hiera.Hiera``, ``hiera_*``): mask-unit attention in the early stages,
global attention later, query pooling at each stage change.

Layer ``l`` is ``blocks.{l}.attn`` (``MaskUnitAttention``). Hiera keeps its tokens *unrolled*
(``model.unroll``): reordered so that every mask unit is contiguous and each query-pooling
step is a max over ``q_stride`` contiguous chunks. Recorded tokens are in that order, not in
row-major grid order, so every :class:`LayerSpec` has ``query_grid``/``key_grid`` None (the
token counts are exact; the stage grid is ``tokens_spatial_shape / 2^stage``, named in the
docstring only) and the token-level analyses refuse every layer rather than place tokens
on the wrong patches. The cache's :class:`TokenLayout` is the patch grid
(``tokens_spatial_shape``, stride ``patch_stride``) for reference.

Hook point ``blocks.{l}.attn`` (B batch, h heads, ``N`` tokens entering the block):

- mask-unit blocks: ``nW = N / (q_stride * window_size)`` units; timm computes
  ``[B, h, nW, n_q, n_k]`` with ``n_k = q_stride * window_size`` keys and ``n_q = window_size``
  queries (max-pooled over ``q_stride`` in the first block of a stage), recorded
  ``[B, nW, h, n_q, n_k]``, kind ``"window"``;
- global blocks: ``[B, h, N / q_stride, N]``, kind ``"self"``.

Mechanism: ``tap.py``.
"""
from __future__ import annotations

import math

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair
from ..cache import TokenLayout

_M = "timm.models.hiera"


@register_adapter
class HieraAdapter(TapAdapter):
    family = "Hiera"
    examples = ("hiera_tiny_224", "hiera_small_abswin_256")
    timm_modules = ("hiera",)
    model_classes = (f"{_M}:Hiera",)
    attention_classes = (f"{_M}:MaskUnitAttention",)
    windows_heads_first = True
    test_models = (("hiera_tiny_224", dict(img_size=(128, 128), embed_dim=16, stages=(1, 1, 1, 1))),
                   ("hiera_tiny_224", dict(img_size=(128, 128), embed_dim=16, num_heads=2, stages=(1, 2, 1, 1),
                                           mask_unit_attn=(True, False, False, False))))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(model.blocks)]

    def heads_of(self, layer: int) -> int:
        return int(self.model.blocks[layer].attn.heads)

    def default_input_size(self) -> tuple[int, int]:
        g, s = self.model.tokens_spatial_shape, pair(self.model.patch_stride)
        return int(g[0]) * s[0], int(g[1]) * s[1]

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        return TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=tuple(self.model.tokens_spatial_shape),
                           patch_size=pair(self.model.patch_stride), input_size=pair(image_hw))

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        n = math.prod(int(v) for v in self.model.tokens_spatial_shape)
        stride = pair(self.model.patch_stride)
        out, stage = [], 0
        for b in self.model.blocks:
            a = b.attn
            qs = int(a.q_stride)
            if qs > 1:
                stage += 1
                stride = (stride[0] * 2, stride[1] * 2)
            if a.use_mask_unit_attn:
                nw = n // (qs * int(a.window_size))
                out.append(LayerGeo("window", int(a.window_size), qs * int(a.window_size), None, None, stride,
                                    stage, windows=nw))
            else:
                out.append(LayerGeo("self", n // qs, n, None, None, stride, stage))
            n //= qs
        return out
