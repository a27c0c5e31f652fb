"""timm MaxViT, CoAtNet and MaxxViT (``timm.models.maxxvit.MaxxVit``: ``maxvit_*``, ``coatnet_*``,
``coatnext_*``, ``maxxvit*``): convolution stages, then attention stages.

Layers are numbered in forward order: every attention module of every block of every stage.
Stage ``s`` works on a grid ``(H_s, W_s)``: the stem's stride, then ``(r - 1) // 2 + 1`` per
stage (each stage downsamples by 2 in its first block, before its attention).

Hook points (B batch, h heads of the layer, stage grid H_s x W_s):

- CoAtNet transformer stages, ``stages.{s}.blocks.{j}.attn`` (``Attention2d`` on NCHW):
  kind ``"self"``, global attention over the stage grid with relative position bias,
  recorded ``[B, h, N, N]``, ``N = H_s * W_s``.
- MaxViT block attention, ``stages.{s}.blocks.{j}.attn_block.attn`` (``AttentionCl`` or
  ``Attention2d``): kind ``"window"``, self-attention inside non-overlapping
  ``wh x ww`` windows (no shift, no padding: timm requires divisible grids), recorded
  ``[B, nW, h, n, n]``, windows row-major over the stage grid, position ``i * ww + j``.
  The same partition as Swin's unshifted windows.
- MaxViT grid attention, ``stages.{s}.blocks.{j}.attn_grid.attn``: kind ``"grid"``, the
  dilated partition: with grid ``(gh, gw)``, partition ``(a, b)`` (row-major over the
  ``(H_s/gh, W_s/gw)`` offsets) position ``i * gw + j`` is stage token
  ``(i * H_s/gh + a, j * W_s/gw + b)``; recorded ``[B, nW, h, n, n]``, ``n = gh * gw``.
- MaxxViT-v2 parallel blocks, ``stages.{s}.blocks.{j}.attn.attn_block`` and
  ``.attn.attn_grid``: the same two kinds, half the heads each.

How they are recorded: see ``tap.py`` (SDPA recompute on the default path, the softmax the
model multiplies with v on the unfused and gradient paths). Relative position bias (table,
MLP or TF-style) is part of the recorded probabilities. The first attention layer's query
grid is the cache's :class:`TokenLayout` (no prefix tokens): for CoAtNet the first
transformer stage's grid (stride 16), so CLS-free analyses on those layers are defined;
MaxViT's windows are not Swin :class:`WindowLayout` s (the model mixes them with grid
partitions and convolutions), so token-level analyses refuse them.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.maxxvit"


@register_adapter
class MaxxVitAdapter(TapAdapter):
    family = "MaxViT/CoAtNet"
    examples = ("maxvit_tiny_tf_224", "coatnet_0_rw_224", "maxxvitv2_nano_rw_256")
    timm_modules = ("maxxvit",)
    model_classes = (f"{_M}:MaxxVit",)
    attention_classes = (f"{_M}:AttentionCl", f"{_M}:Attention2d")
    test_models = (
        ("maxvit_tiny_tf_224", dict(img_size=64, embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"),
                                    transformer_dim_head=8, stem_width=8)),
        ("maxvit_rmlp_pico_rw_256", dict(img_size=64, embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"),
                                         transformer_dim_head=8, stem_width=8)),
        ("coatnet_nano_rw_224", dict(img_size=64, embed_dim=(8, 16, 16, 32), depths=(1, 1, 1, 1),
                                     transformer_dim_head=8, stem_width=8)),
        ("maxxvitv2_nano_rw_256", dict(img_size=64, embed_dim=(16, 32), depths=(1, 1), block_type=("PM", "PM"),
                                       transformer_dim_head=8, stem_width=8)),
    )

    @classmethod
    def _layers(cls, model: nn.Module) -> list[tuple[str, nn.Module, int, str, object]]:
        """``(path, attention module, stage, kind, partition size or None)`` in forward order."""
        out = []
        for s, stage in enumerate(model.stages):
            for j, blk in enumerate(stage.blocks):
                name = type(blk).__name__
                p = f"stages.{s}.blocks.{j}"
                if name in ("MbConvBlock", "ConvNeXtBlock"):
                    if any("Attention" in type(m).__name__ or "Attn" in type(m).__name__ for m in blk.modules()):
                        raise TypeError(f"{p} ({name}) holds an attention module vitlens does not expect")
                    continue
                if name == "TransformerBlock2d":
                    out.append((f"{p}.attn", blk.attn, s, "self", None))
                elif name == "MaxxVitBlock":
                    for part in ("attn_block", "attn_grid"):
                        pa = getattr(blk, part)
                        if pa is None:
                            continue
                        if type(pa).__name__ not in ("PartitionAttentionCl", "PartitionAttention2d"):
                            raise TypeError(f"{p}.{part} is {type(pa).__name__}")
                        kind = "window" if pa.partition_block else "grid"
                        out.append((f"{p}.{part}.attn", pa.attn, s, kind, pair(pa.partition_size)))
                elif name == "ParallelMaxxVitBlock":
                    pa = blk.attn
                    out.append((f"{p}.attn.attn_block", pa.attn_block, s, "window", pair(pa.partition_size)))
                    out.append((f"{p}.attn.attn_grid", pa.attn_grid, s, "grid", pair(pa.partition_size)))
                else:
                    raise TypeError(f"{p} is a {name}, a block vitlens does not know")
        return out

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(p, m) for p, m, *_ in cls._layers(model)]

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        sh, sw = pair(self.model.stem.stride)
        h, w = image_hw[0] // sh, image_hw[1] // sw
        grids, strides = [], []
        for _ in self.model.stages:
            h, w, sh, sw = (h - 1) // 2 + 1, (w - 1) // 2 + 1, sh * 2, sw * 2
            grids.append((h, w))
            strides.append((sh, sw))
        out = []
        for _p, _m, s, kind, part in self._layers(self.model):
            (h, w), stride = grids[s], strides[s]
            if kind == "self":
                out.append(LayerGeo("self", h * w, h * w, (h, w), (h, w), stride, s))
            else:
                n = part[0] * part[1]
                nw = (h // part[0]) * (w // part[1])
                out.append(LayerGeo(kind, n, n, (h, w), (h, w), stride, s, windows=nw))
        return out
