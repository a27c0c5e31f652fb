"""timm LeViT (``timm.models.levit.Levit`` / ``LevitDistilled``: ``levit_*``, ``levit_conv_*``):
attention with a learned per-head position bias, in stages joined by subsample attention.

Layers in forward order: per stage ``s``, first (stages 1, 2) the subsampling layer
``stages.{s}.downsample.attn_downsample`` (``AttentionDownsample``), then
``stages.{s}.blocks.{j}.attn`` (``Attention``). Each module is built for a fixed grid
(``resolution``): the stem's stride (16), then ``(r - 1) // 2 + 1`` per subsampling.

Hook points (B batch, h heads, stage grid ``r = (r_h, r_w)``, ``N = r_h * r_w``):

- ``...blocks.{j}.attn``: ``softmax(q·kᵀ·scale + bias[h, |Δy| * r_w + |Δx|])`` over the
  stage grid, recorded ``[B, h, N, N]``, kind ``"self"``.
- ``...downsample.attn_downsample``: queries are the stage's tokens subsampled with stride 2
  (grid ``ceil(r / 2)``, the tokens ``[::2, ::2]``), keys the ``N`` tokens of the previous
  grid; recorded ``[B, h, N_q, N]``, kind ``"self"`` with ``query_grid`` != ``key_grid``.

LeViT has no fused path: the probabilities are the softmax the model multiplies with v
(``tap.py``). No class token (the distilled variants have two heads, no tokens). The cache's
layout is the first stage's grid; token-level analyses work on the first stage's layers and
refuse the rest (rollout refuses: the grids change).
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.levit"


@register_adapter
class LevitAdapter(TapAdapter):
    family = "LeViT"
    examples = ("levit_128s", "levit_conv_256")
    timm_modules = ("levit",)
    model_classes = (f"{_M}:Levit", f"{_M}:LevitDistilled")
    attention_classes = (f"{_M}:Attention", f"{_M}:AttentionDownsample")
    test_models = (("levit_128s", dict(img_size=64, embed_dim=(16, 32), key_dim=8, num_heads=(2, 2), depth=(1, 1))),
                   ("levit_conv_128s", dict(img_size=64, embed_dim=(16, 32, 32), key_dim=8, num_heads=(2, 2, 2),
                                            depth=(1, 1, 1))))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out = []
        for s, st in enumerate(model.stages):
            if not isinstance(st.downsample, nn.Identity):
                out.append((f"stages.{s}.downsample.attn_downsample", st.downsample.attn_downsample))
            out += [(f"stages.{s}.blocks.{j}.attn", b.attn) for j, b in enumerate(st.blocks)]
        return out

    def default_input_size(self) -> tuple[int, int]:
        r = pair(self.attention_modules()[0][1].resolution)
        s = pair(self.model.stem.stride)
        return r[0] * s[0], r[1] * s[1]

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        stride = pair(self.model.stem.stride)
        out, stage = [], 0
        for path, m in self.attention_modules():
            stage = int(path.split(".")[1])
            r = pair(m.resolution)
            if type(m).__name__ == "AttentionDownsample":
                st = int(m.stride)
                q = (-(-r[0] // st), -(-r[1] // st))
                out.append(LayerGeo("self", q[0] * q[1], r[0] * r[1], q, r, (stride[0] * st, stride[1] * st), stage))
                stride = (stride[0] * st, stride[1] * st)
            else:
                out.append(LayerGeo("self", r[0] * r[1], r[0] * r[1], r, r, stride, stage))
        return out
