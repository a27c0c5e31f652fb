"""EVA / EVA02 (``timm.models.eva.Eva``): rotary position embedding (RoPE) on q and k.

Recorded through the generic unfused path (see ``generic.py``): with ``fused_attn`` off,
timm applies RoPE to the patch part of q and k, then softmax(q·kᵀ·scale), and
``blocks.{i}.attn.attn_drop`` receives the probabilities ``[B, H, T, T]``. Register
tokens (``*_reg*`` EVA variants) are read from ``model.reg_token``.
"""
from __future__ import annotations

from . import register_adapter
from .generic import BlocksAdapter


@register_adapter
class EvaAdapter(BlocksAdapter):
    family = "EVA"
    examples = ("eva02_tiny_patch14_224", "eva02_base_patch14_224")
    order = 10
    model_classes = ("timm.models.eva:Eva",)
    attention_classes = ("timm.models.eva:EvaAttention",)
    test_models = (("eva02_tiny_patch14_224", dict(img_size=56, depth=2)), ("vit_betwixt_patch16_rope_reg4_gap_256", dict(img_size=64, depth=2)))
    timm_modules = ("eva",)
