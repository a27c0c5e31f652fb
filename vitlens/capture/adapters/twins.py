"""timm Twins (``timm.models.twins.Twins``: ``twins_pcpvt_*``, ``twins_svt_*``): global sub-sampled
attention (PCPVT, and every other SVT block) and locally-grouped window attention (SVT).

Layer ``l`` is ``blocks.{s}.{j}.attn`` in forward order. Stage ``s`` works on the grid of its
patch embedding ``patch_embeds.{s}`` (stride 4, then 2 per stage).

Hook points (B batch, h heads, stage grid ``H_s x W_s``, ``N_s = H_s * W_s``):

- ``GlobalSubSampleAttn``: queries the ``N_s`` stage tokens, keys the tokens after a
  ``sr x sr`` stride-``sr`` conv (``floor(H_s / sr) x floor(W_s / sr)``; the stage grid when
  ``sr == 1``). Recorded ``[B, h, N_s, K_s]``, kind ``"self"``, ``key_grid`` the reduced grid.
- ``LocallyGroupedAttn`` (SVT): the stage grid is zero-padded at the bottom/right to
  multiples of ``ws`` and cut into ``ws x ws`` windows, row-major; attention inside each
  window, padding positions included as keys (timm pads, it does not mask). Recorded
  ``[B, nW, h, ws², ws²]``, kind ``"window"``; window ``(a, b)`` position ``i * ws + j`` is
  stage token ``(a*ws + i, b*ws + j)`` (padding if outside the grid). No shift, but padded
  keys are attended, so this is not a Swin :class:`WindowLayout`.

Token-level analyses refuse every layer that is not square self-attention over the first
stage's grid (``cache.require_token_attention``). Mechanism: ``tap.py``.
"""
from __future__ import annotations

import math

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, conv_out, pair

_M = "timm.models.twins"


@register_adapter
class TwinsAdapter(TapAdapter):
    family = "Twins"
    examples = ("twins_pcpvt_small", "twins_svt_small")
    timm_modules = ("twins",)
    model_classes = (f"{_M}:Twins",)
    attention_classes = (f"{_M}:GlobalSubSampleAttn", f"{_M}:LocallyGroupedAttn")
    test_models = (("twins_pcpvt_small", dict(img_size=64, embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1),
                                              num_heads=(1, 2, 2, 4))),
                   ("twins_svt_small", dict(img_size=80, embed_dims=(8, 16, 32), depths=(2, 2, 2),
                                            num_heads=(1, 2, 4), wss=(3, 3, 3), sr_ratios=(4, 2, 1))))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{s}.{j}.attn", b.attn) for s, st in enumerate(model.blocks) for j, b in enumerate(st)]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.patch_embeds[0].img_size)

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        hw, out = pair(image_hw), []
        stride = (1, 1)
        for s, (pe, st) in enumerate(zip(self.model.patch_embeds, self.model.blocks)):
            hw = conv_out(hw, pe.proj)
            k = pair(pe.proj.stride)
            stride = (stride[0] * k[0], stride[1] * k[1])
            for blk in st:
                a = blk.attn
                if type(a).__name__ == "LocallyGroupedAttn":
                    ws = int(a.ws)
                    nw = math.ceil(hw[0] / ws) * math.ceil(hw[1] / ws)
                    out.append(LayerGeo("window", ws * ws, ws * ws, hw, hw, stride, s, windows=nw))
                else:
                    kg = conv_out(hw, a.sr) if a.sr is not None else hw
                    out.append(LayerGeo("self", hw[0] * hw[1], kg[0] * kg[1], hw, kg, stride, s))
        return out
