"""timm NaFlexViT (``timm.models.naflexvit.NaFlexVit``, ``naflexvit_*``, incl. the C-RADIO
backbones): a ViT whose embedding also accepts pre-patchified, variable-length inputs.

Two input modes, decided per call:

- **standard image path** (recorded): ``model(images)`` with ``images`` ``[B, C, H, W]``.
  ``embeds`` (``NaFlexEmbeds``) patchifies the image row-major over the ``(gh, gw)`` grid
  (linear projection of each flattened patch, or a strided conv), adds the position
  embedding resampled to that grid, and prepends the prefix tokens in the order
  ``cls`` (if ``class_token``) then ``reg`` x ``reg_tokens`` (RADIO's per-teacher summary
  tokens beyond the first are registers). ``embeds`` returns ``(tokens, grid_size)``:
  the grid is *read* from that return value each forward and checked against the layout
  predicted from the image size (``embeds.dynamic_feat_size``). No attention mask is made
  (``patch_valid`` is None), so every query attends to every token.
- **NaFlex mode** (refused): a dict from the NaFlex collator, or ``patch_coord`` /
  ``patch_valid`` given. Each image then has its own aspect ratio and number of valid
  patches, padded to a common length and masked; the token layout is a property of each
  input (per-image grid, padding positions), not of the model, and vitlens' caches carry
  one layout per forward. The call raises :class:`UnsupportedModelError` before the model runs.

Layers, in forward order (B batch, H heads, T = prefix + gh * gw tokens, L latents):

- ``blocks.{i}.attn`` (``timm.layers.Attention``, kind ``"self"``): ``[B, H, T, T]``;
  ``timm.layers.attention:AttentionRope`` for RoPE configurations (``rope_type``).
- ``attn_pool`` (``AttentionPoolLatent``, kind ``"pool"``; ``*_map``, ``*_siglip``): latents
  x the patch tokens (prefix tokens stripped unless ``pool_include_prefix``): ``[B, H, L, N]``.

Hook points and mechanism are the VisionTransformer adapter's (``vit.py``, whose
``install`` this shares): the default path recomputes ``softmax(q·kᵀ·scale + mask)`` from
the module's own q/k (``q_norm``/``k_norm`` outputs for ``Attention``, the
``scaled_dot_product_attention`` arguments for RoPE attention and the pool), outputs
bit-identical; ``grad=True`` switches ``fused_attn`` off and reads ``attn_drop`` / the
pool's softmax. Token dropping is refused (the position embedding is resampled per grid).
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn

from . import Adapter, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError
from .generic import _to_pair, prefix_names_of
from .vit import _ATTENTION, _LATENT, VitAdapter

_ROPE_ATTENTION = "timm.layers.attention:AttentionRope"

_NAFLEX_MODE = (
    "NaFlex mode (a dict from the NaFlex collator, or patch_coord / patch_valid) is refused: each image "
    "then has its own patch grid and padding mask, so the token layout belongs to each input, not to the "
    "model, and vitlens records one layout per forward. Call the model on a [B, C, H, W] image tensor "
    "(the standard path, recorded exactly), one image size per batch")


@register_adapter
class NaFlexVitAdapter(VitAdapter):
    family = "NaFlexViT"
    examples = ("naflexvit_base_patch16_gap", "naflexvit_base_patch16_siglip")
    order = 10
    timm_modules = ("naflexvit",)
    model_classes = ("timm.models.naflexvit:NaFlexVit",)
    attention_classes = (_ATTENTION, _ROPE_ATTENTION, _LATENT)
    attn_drop_classes = (_ATTENTION, _ROPE_ATTENTION)
    token_drop = False
    forward_kept = Adapter.forward_kept
    test_models = (("naflexvit_base_patch16_gap", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
                   ("naflexvit_base_patch16_parfac_gap", dict(img_size=(48, 64), depth=2, embed_dim=64,
                                                              num_heads=4)),
                   ("naflexvit_base_patch16_map", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
                   ("naflexvit_base_patch16_radio_v3", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
                   ("naflexvit_base_patch16_gap", dict(img_size=48, depth=2, embed_dim=64, num_heads=4,
                                                       rope_type="axial")))

    @property
    def num_prefix_tokens(self) -> int:
        return len(prefix_names_of(self.model.embeds))

    def default_input_size(self) -> tuple[int, int]:
        img = getattr(self.model.embeds, "default_img_size", None)
        if img is not None:
            return _to_pair(img)
        return super().default_input_size()

    def _layout(self, image_hw: tuple[int, int], grid: tuple[int, int]) -> TokenLayout:
        names = prefix_names_of(self.model.embeds)
        return TokenLayout(num_prefix_tokens=len(names), prefix_names=names, grid_size=grid,
                           patch_size=_to_pair(self.model.embeds.patch_size), input_size=tuple(image_hw))

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        """Layout of the standard image path: prefix tokens, then the row-major patch grid."""
        return self._layout(image_hw, _to_pair(self.model.embeds.dynamic_feat_size(tuple(image_hw))))

    def _install_layout_hook(self, stack: ExitStack, set_layout: Callable[[TokenLayout], None],
                             current: dict[str, TokenLayout]) -> None:
        def on_call(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("x")
            if isinstance(x, dict) or any(kwargs.get(k) is not None for k in ("patch_coord", "patch_valid")) \
                    or len(args) > 2 and any(a is not None for a in args[1:3]):
                raise UnsupportedModelError(f"{type(self.model).__name__}: {_NAFLEX_MODE}")
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} got input of shape "
                    f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}; vitlens records "
                    f"the standard path only, a [B, C, H, W] image tensor. {_NAFLEX_MODE}")
            current["image_hw"] = tuple(int(v) for v in x.shape[-2:])  # type: ignore[assignment]

        def on_embeds(_m: nn.Module, args: tuple, out: Any) -> None:
            grid = out[1] if isinstance(out, tuple) and len(out) == 2 else None
            if grid is None:
                raise UnsupportedModelError(f"{type(self.model).__name__}: {_NAFLEX_MODE}")
            hw = current.get("image_hw") or tuple(int(v) for v in args[0].shape[-2:])
            layout = self._layout(hw, _to_pair(grid))  # type: ignore[arg-type]
            if layout.num_tokens != out[0].shape[1] or layout.grid_size != self.layout_for(hw).grid_size:
                raise UnsupportedModelError(
                    f"embeds returned {out[0].shape[1]} tokens on a {tuple(grid)} grid but vitlens predicted "
                    f"{self.layout_for(hw).num_tokens} on {self.layout_for(hw).grid_size}; this model's forward "
                    f"differs from what vitlens expects")
            current["layout"] = layout
            set_layout(layout)

        stack.callback(self.model.register_forward_pre_hook(on_call, with_kwargs=True).remove)
        stack.callback(self.model.embeds.register_forward_hook(on_embeds).remove)

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """The tokens entering each block's attention, ``blocks.{i}.norm1`` (``[B, T, D]``)."""
        return tuple(f"blocks.{i}.norm1" for i in range(len(self.model.blocks))), "tokens"
