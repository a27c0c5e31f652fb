"""timm HieraDet, SAM 2's image encoder (``timm.models.hieradet_sam2.HieraDet``:
``sam2_hiera_*``, ``hieradet_small``): windowed and global attention on NHWC stage grids, with
query max-pooling at each stage change.

Layer ``l`` is ``blocks.{l}.attn`` (``MultiScaleAttention``). Stage 0's grid is the patch
embedding's (conv 7x7, stride 4, padding 3); the first block of each later stage pools the
queries with a 2x2 max-pool (floor), which sets the next grid. Unlike Hiera, tokens stay in
row-major grid order.

Hook point ``blocks.{l}.attn`` (B batch, h heads, grid ``(H, W)`` entering the block):

- windowed blocks (``window_size`` ws > 0): the grid is zero-padded at the bottom/right to
  multiples of ws and cut into ws x ws windows, row-major (padded positions are attended as
  keys, not masked); recorded ``[B, nW, h, n_q, ws²]``, kind ``"window"``; in a pooling block
  the ``n_q = (ws/2)²`` queries are the 2x2-max-pooled window tokens (``query_grid`` the
  pooled grid), else ``n_q = ws²``;
- global blocks (ws == 0): ``[B, h, N_q, H * W]``, kind ``"self"`` over the stage grid
  (``N_q`` the pooled grid's tokens in a pooling block).

Windows are not Swin :class:`WindowLayout` s (padding attended, pooled queries): token-level
analyses refuse them; global layers on the first stage's grid would pass. Mechanism: ``tap.py``.
"""
from __future__ import annotations

import math

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, conv_out, pair

_M = "timm.models.hieradet_sam2"


@register_adapter
class HieraDetAdapter(TapAdapter):
    family = "HieraDet (SAM 2)"
    examples = ("sam2_hiera_tiny", "hieradet_small")
    timm_modules = ("hieradet_sam2",)
    model_classes = (f"{_M}:HieraDet",)
    attention_classes = (f"{_M}:MultiScaleAttention",)
    test_models = (("sam2_hiera_tiny", dict(embed_dim=16, stages=(1, 2, 1, 1), global_att_blocks=(2,),
                                            pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(model.blocks)]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.pretrained_cfg.get("input_size", (3, 1024, 1024))[-2:])

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        proj = self.model.patch_embed.proj
        h, w = conv_out(image_hw, proj)
        stride = pair(proj.stride)[0]
        out, stage = [], 0
        for b in self.model.blocks:
            ws = pair(b.window_size)
            qs = pair(b.q_stride) if b.q_stride else (1, 1)
            qh, qw = h // qs[0], w // qs[1]
            if b.q_stride:
                stage += 1
            qstride = (stride * qs[0], stride * qs[1])
            if b.is_windowed:
                nw = math.ceil(h / ws[0]) * math.ceil(w / ws[1])
                nq = (ws[0] // qs[0]) * (ws[1] // qs[1])
                out.append(LayerGeo("window", nq, ws[0] * ws[1], (qh, qw), (h, w), qstride, stage, windows=nw))
            else:
                out.append(LayerGeo("self", qh * qw, h * w, (qh, qw), (h, w), qstride, stage))
            h, w, stride = qh, qw, qstride[0]
        return out
