"""timm FastViT (``timm.models.fastvit.FastVit``): the attention stages (``fastvit_sa*``,
``fastvit_ma36``, ``fastvit_mci*``). The RepMixer-only variants (``fastvit_t8``, ``t12``,
``s12``) have no attention and are refused with that reason.

Layer ``l`` is ``stages.{s}.blocks.{j}.token_mixer`` of every ``AttentionBlock`` in forward
order (the ``RepMixerBlock`` s mix tokens with depth-wise convolutions and are not recorded).
Stage grids: the stem's stride-2, stride-2 convs (``ceil``), then each stage's
``downsample`` stride-2 conv.

Hook point ``stages.{s}.blocks.{j}.token_mixer`` (``Attention`` on NCHW input): global
self-attention over the stage's ``N_s = H_s * W_s`` tokens (no prefix, no position bias:
FastViT adds a conditional positional conv before the stage), recorded ``[B, h, N_s, N_s]``,
kind ``"self"``. The cache's layout is the first attention stage's grid (stride 32 or 64),
so the token-level analyses work when only that stage attends, and refuse layers on other
grids (``fastvit_mci3/4`` attend in two stages). Mechanism: ``tap.py``.
"""
from __future__ import annotations

from torch import nn

from . import refuse, register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.fastvit"


@register_adapter
class FastVitAdapter(TapAdapter):
    family = "FastViT"
    examples = ("fastvit_sa12", "fastvit_mci0")
    timm_modules = ("fastvit",)
    model_classes = (f"{_M}:FastVit",)
    attention_classes = (f"{_M}:Attention",)
    test_models = (("fastvit_sa12", dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 16, 32), mlp_ratios=(2, 2, 2, 2))),)

    @classmethod
    def claims_model(cls, model: nn.Module) -> bool:
        return super().claims_model(model) and any(
            type(b).__name__ == "AttentionBlock" for st in model.stages for b in st.blocks)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out = []
        for s, st in enumerate(model.stages):
            for j, b in enumerate(st.blocks):
                name = type(b).__name__
                if name == "AttentionBlock":
                    out.append((f"stages.{s}.blocks.{j}.token_mixer", b.token_mixer))
                elif name != "RepMixerBlock":
                    raise TypeError(f"stages.{s}.blocks.{j} is a {name}, a block vitlens does not know")
        return out

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.model.pretrained_cfg.get("input_size", (3, 256, 256))[-2:])

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        h, w = image_hw
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1          # stem: stride 2, 1, 2 (3x3, padding 1)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        stride = 4
        out = []
        for s, st in enumerate(self.model.stages):
            if not isinstance(st.downsample, nn.Identity):
                h, w, stride = (h - 1) // 2 + 1, (w - 1) // 2 + 1, stride * 2
            for b in st.blocks:
                if type(b).__name__ == "AttentionBlock":
                    out.append(LayerGeo("self", h * w, h * w, (h, w), (h, w), (stride, stride), s))
        return out


refuse(f"{_M}:FastVit", "this FastViT variant mixes tokens with RepMixer (depth-wise convolutions) in every "
                        "stage and has no attention to record; the fastvit_sa*, fastvit_ma36 and fastvit_mci* "
                        "variants have attention stages")
