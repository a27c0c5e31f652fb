"""BEiT / BEiTv2 (``timm.models.beit.Beit``): relative position bias inside the attention.

Recorded through the generic unfused path (see ``generic.py``): with ``fused_attn`` off,
timm adds the relative position bias (per block or shared) to q·kᵀ before the softmax,
and ``blocks.{i}.attn.attn_drop`` receives the probabilities ``[B, H, T, T]``.
"""
from __future__ import annotations

from . import register_adapter
from .generic import BlocksAdapter


@register_adapter
class BeitAdapter(BlocksAdapter):
    family = "BEiT"
    examples = ("beit_base_patch16_224", "beitv2_base_patch16_224")
    order = 10
    model_classes = ("timm.models.beit:Beit",)
    attention_classes = ("timm.models.beit:Attention",)
    test_models = (("beit_base_patch16_224", dict(img_size=64, depth=2)), ("beitv2_base_patch16_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)))
    timm_modules = ("beit",)
