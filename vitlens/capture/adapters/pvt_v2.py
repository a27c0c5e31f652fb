"""timm PVT-v2 (``timm.models.pvt_v2.PyramidVisionTransformerV2``, ``pvt_v2_*``): spatial-reduction
attention in four stages.

Layer ``l`` is ``stages.{s}.blocks.{j}.attn`` in forward order. Stage ``s`` works on the grid
``(H_s, W_s)`` of its overlapping patch embedding (``patch_embed`` conv 7x7 stride 4, then each
stage's ``downsample`` conv 3x3 stride 2: ``ceil(H / 4)``, then ``ceil(H_s / 2)``).

Hook point ``stages.{s}.blocks.{j}.attn`` (``Attention``; B batch, h heads):
queries are the stage's ``N_s = H_s * W_s`` tokens; keys are the tokens after the spatial
reduction: a ``sr x sr`` stride-``sr`` conv (``floor(H_s / sr)`` x ``floor(W_s / sr)``
keys), none when ``sr == 1`` (keys = queries), or, for ``pvt_v2_b2_li``, a 7 x 7 adaptive
average pool. Recorded ``[B, h, N_s, K_s]``: kind ``"self"`` with ``query_grid`` the stage grid
and ``key_grid`` the reduced grid. Only layers with ``sr == 1`` on the first stage's grid would
be square self-attention over the input layout; the others are refused by token-level
analyses (rollout, CLS maps, distances) with the reason. Mechanism: ``tap.py``.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, conv_out, pair


@register_adapter
class PvtV2Adapter(TapAdapter):
    family = "PVT-v2"
    examples = ("pvt_v2_b0", "pvt_v2_b2_li")
    timm_modules = ("pvt_v2",)
    model_classes = ("timm.models.pvt_v2:PyramidVisionTransformerV2",)
    attention_classes = ("timm.models.pvt_v2:Attention",)
    test_models = (("pvt_v2_b0", dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))),
                   ("pvt_v2_b2_li", dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"stages.{s}.blocks.{j}.attn", b.attn)
                for s, st in enumerate(model.stages) for j, b in enumerate(st.blocks)]

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        hw = conv_out(image_hw, self.model.patch_embed.proj)
        stride = (4, 4)
        out = []
        for s, st in enumerate(self.model.stages):
            if st.downsample is not None:
                hw = conv_out(hw, st.downsample.proj)
                stride = (stride[0] * 2, stride[1] * 2)
            for blk in st.blocks:
                a = blk.attn
                if a.pool is not None:
                    kg = pair(a.pool.output_size)
                elif a.sr is not None:
                    kg = conv_out(hw, a.sr)
                else:
                    kg = hw
                out.append(LayerGeo("self", hw[0] * hw[1], kg[0] * kg[1], hw, kg, stride, s))
        return out
