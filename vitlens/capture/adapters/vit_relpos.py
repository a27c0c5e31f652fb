"""timm VisionTransformerRelPos (``vit_relpos_*``, ``vit_srelpos_*``): ViT with a relative
position bias (a learned table, ``RelPosBias``, or an MLP over log-spaced offsets,
``RelPosMlp``), per block or shared by all blocks (``vit_srelpos_*``), and no absolute
position embedding.

Hook points, per layer ``i`` (B batch, H heads, T = prefix + patches):

- ``patch_embed`` (pre-hook): input image ``[B, C, H_in, W_in]`` -> token layout
  (``("cls",)`` for ``*_cls*`` models, no prefix otherwise; the grid is fixed by the bias
  table, so the input must have the configured size).
- default path: ``blocks.{i}.attn`` calls ``F.scaled_dot_product_attention(q, k, v,
  attn_mask=bias)`` with the relative position bias ``[1, H, T, T]`` as an additive
  mask; a ``TorchFunctionMode`` sees that call (``generic.SdpaTap``) and computes
  ``softmax(q·kᵀ·scale + bias)`` beside it, ``[B, H, T, T]``; outputs bit-identical.
- gradient path: ``blocks.{i}.attn.fused_attn`` off for the block, and
  ``blocks.{i}.attn.attn_drop`` (forward hook) receives the probabilities (bias added
  by ``rel_pos`` before the softmax), the tensor multiplied with v.

Token dropping is refused: the bias is tied to the full patch grid.
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from ...errors import UnsupportedModelError
from .generic import BlocksAdapter


@register_adapter
class VitRelPosAdapter(BlocksAdapter):
    family = "VisionTransformerRelPos"
    examples = ("vit_relpos_base_patch16_224", "vit_srelpos_small_patch16_224")
    order = 10
    timm_modules = ("vision_transformer_relpos",)
    model_classes = ("timm.models.vision_transformer_relpos:VisionTransformerRelPos",)
    attention_classes = ("timm.models.vision_transformer_relpos:RelPosAttention",)
    test_models = (("vit_relpos_small_patch16_224", dict(img_size=48, depth=2)),
                   ("vit_srelpos_small_patch16_224", dict(img_size=(32, 48), depth=2)),
                   ("vit_relpos_medium_patch16_cls_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=2)),
                   ("vit_relpos_base_patch16_rpn_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(model.blocks)]

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """Tokens entering block i's attention ``[B, T, D]``: ``blocks.{i}.norm1`` for pre-norm
        blocks; for post-norm blocks (``ResPostRelPosBlock``, ``*_rpn_*``) the block input
        (the previous block's output; the patch embedding for block 0)."""
        points = []
        for i, b in enumerate(self.model.blocks):
            if type(b).__name__ == "ResPostRelPosBlock":
                if not i and self.model.cls_token is not None:  # patch_embed's output lacks the CLS token
                    raise UnsupportedModelError(
                        f"{type(self.model).__name__} with post-norm blocks and a class token has no module "
                        f"whose output is the sequence entering block 0; Grad-CAM is not available for it")
                points.append(f"blocks.{i - 1}" if i else "patch_embed")
            else:
                points.append(f"blocks.{i}.norm1")
        return tuple(points), "tokens"
