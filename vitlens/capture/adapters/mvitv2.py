"""timm MViTv2 (``timm.models.mvitv2.MultiScaleVit``, ``mvitv2_*``): pooling attention with
decomposed relative position bias.

Layer ``l`` is ``stages.{s}.blocks.{j}.attn`` (``MultiScaleAttention`` or
``MultiScaleAttentionPoolFirst``) in forward order. The first grid is the patch embedding's
(conv 7x7, stride 4, padding 3); every attention may pool its queries (``pool_q``: a conv or
max/avg pool, stride 2 at each stage's first block, which sets the next grid) and its keys and
values (``pool_k``: stride ``stride_kv``, adaptive, e.g. 8 -> 4 -> 2 -> 1 over the stages).

Hook point ``stages.{s}.blocks.{j}.attn`` (B batch, h heads): recorded ``[B, h, Tq, Tk]`` with
``Tq = P + |pooled query grid|`` and ``Tk = P + |pooled key grid|`` (``P = 1`` for the
``*_cls`` variants, whose class token is not pooled; else 0): the softmax of
``q·kᵀ·scale + rel_pos(q)`` the model multiplies with v (MViTv2 has no fused path). Kind
``"self"`` with ``query_grid`` and ``key_grid`` the pooled grids: keys are coarser than
queries in most layers, so token-level analyses refuse those layers with the reason.
Mechanism: ``tap.py``.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, conv_out, pair

_M = "timm.models.mvitv2"


@register_adapter
class MViTv2Adapter(TapAdapter):
    family = "MViTv2"
    examples = ("mvitv2_tiny", "mvitv2_small_cls")
    timm_modules = ("mvitv2",)
    model_classes = (f"{_M}:MultiScaleVit",)
    attention_classes = (f"{_M}:MultiScaleAttention", f"{_M}:MultiScaleAttentionPoolFirst")
    test_models = (("mvitv2_tiny", dict(img_size=64)),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"stages.{s}.blocks.{j}.attn", b.attn)
                for s, st in enumerate(model.stages) for j, b in enumerate(st.blocks)]

    def default_input_size(self) -> tuple[int, int]:
        return self._img

    @property
    def _img(self) -> tuple[int, int]:
        # the relative-position tables are built for img_size // 4: recover it from stage 0
        a = self.model.stages[0].blocks[0].attn
        size = getattr(a, "rel_pos_h", None)
        if size is not None:
            g0 = (size.shape[0] + 1) // 2  # rel_sp_dim = 2 * max(q, k) - 1 with q == first grid (stride 1)
            s = pair(self.model.patch_embed.proj.stride)
            return g0 * s[0], g0 * s[1]
        return pair(self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",) if getattr(self.model, "cls_token", None) is not None else ()

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        proj = self.model.patch_embed.proj
        grid = conv_out(image_hw, proj)
        stride = pair(proj.stride)
        P = len(self.prefix_names())
        out = []
        for s, st in enumerate(self.model.stages):
            for b in st.blocks:
                a = b.attn
                q = conv_out(grid, a.pool_q) if a.pool_q is not None else grid
                k = conv_out(grid, a.pool_k) if a.pool_k is not None else grid
                if a.pool_q is not None:
                    f = pair(a.pool_q.stride)
                    stride = (stride[0] * f[0], stride[1] * f[1])
                out.append(LayerGeo("self", P + q[0] * q[1], P + k[0] * k[1], q, k, stride, s, P, P))
                grid = q
        return out
