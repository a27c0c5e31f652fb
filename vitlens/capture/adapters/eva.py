"""EVA / EVA02 and the other ViTs timm builds with ``timm.models.eva.Eva``: rotary position
embedding (RoPE) on q and k.

Attention classes (both apply RoPE to the patch part of q and k, after q/k norm, before
the softmax; the prefix tokens are not rotated):

- ``timm.models.eva:EvaAttention``: EVA, EVA02, DINOv3, LingBot, ``vit_*_rope_reg*_gap``.
- ``timm.layers.attention:AttentionRope`` (``attn_type="rope"``): the ``vit_*_rope_*``
  (axial and mixed-frequency RoPE, ``rope_mixed``: one rotation table per block),
  Perception Encoder (``vit_pe_*``) and Sapiens2 (``vit_*_sapiens2``: grouped-query
  attention, k and v repeated to every head *before* the attention call, so the recorded
  heads are the query heads).
- ``timm.layers.attention_pool:AttentionPoolLatent`` (``attn_pool``, the MAP head of
  ``vit_pe_core_*``): recorded as an extra layer of kind ``"pool"``, latents x *all*
  tokens (Eva hands the pool its whole sequence, prefix tokens included): ``[B, H, L, T]``.

Layers, in forward order: ``blocks.{i}.attn`` (``"self"``, ``[B, H, T, T]``), then
``attn_pool`` if the model has one. Hook points and mechanism are those of the
VisionTransformer adapter (``vit.py``, whose ``install`` this adapter shares):

- ``patch_embed`` (pre-hook): input image -> token layout (prefix tokens from
  ``cls_token`` / ``reg_token``; dynamic image size honoured).
- default path: ``blocks.{i}.attn`` / ``attn_pool`` are marked as running and the one
  ``F.scaled_dot_product_attention(q, k, v, attn_mask)`` each calls is seen by a
  ``TorchFunctionMode`` (``generic.SdpaTap``): q and k already rotated (and GQA-expanded);
  ``softmax(q·kᵀ·scale + mask)`` is computed beside it, outputs bit-identical.
- gradient path (``grad=True``): ``fused_attn`` off for the block; ``blocks.{i}.attn.attn_drop``
  (forward hook) receives the probabilities ``[B, H, T, T]`` multiplied with v; for the
  pool head (no ``attn_drop``) its softmax is taken as it is made (``generic.SoftmaxTap``).

Token dropping is refused (RoPE is tied to the full patch grid).
"""
from __future__ import annotations

from . import Adapter, register_adapter
from ..cache import TokenLayout
from .vit import _LATENT, VitAdapter

_EVA_ATTENTION = "timm.models.eva:EvaAttention"
_ROPE_ATTENTION = "timm.layers.attention:AttentionRope"


@register_adapter
class EvaAdapter(VitAdapter):
    family = "EVA"
    examples = ("eva02_tiny_patch14_224", "eva02_base_patch14_224", "vit_small_patch16_rope_224",
                "vit_pe_core_tiny_patch16_384")
    order = 10
    model_classes = ("timm.models.eva:Eva",)
    attention_classes = (_EVA_ATTENTION, _ROPE_ATTENTION, _LATENT)
    attn_drop_classes = (_EVA_ATTENTION, _ROPE_ATTENTION)
    token_drop = False
    forward_kept = Adapter.forward_kept
    test_models = (("eva02_tiny_patch14_224", dict(img_size=56, depth=2)),
                   ("vit_betwixt_patch16_rope_reg4_gap_256", dict(img_size=64, depth=2)),
                   # AttentionRope: axial RoPE; mixed (per-block) RoPE; PE with a MAP pool head
                   ("vit_small_patch16_rope_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
                   ("vit_small_patch16_rope_mixed_224", dict(img_size=(48, 64), depth=2, embed_dim=64,
                                                             num_heads=4)),
                   ("vit_pe_core_tiny_patch16_384", dict(img_size=48, depth=2)),
                   # Sapiens2: grouped-query attention (2 kv heads for 4 query heads), 8 registers
                   ("vit_base_patch16_sapiens2", dict(img_size=48, depth=2, embed_dim=64, num_heads=4,
                                                      num_kv_heads=2)))
    timm_modules = ("eva",)

    def _pool_keys_prefix(self, layout: TokenLayout) -> int:
        """Eva's ``attn_pool`` attends over the whole sequence, prefix tokens included."""
        return layout.num_prefix_tokens
