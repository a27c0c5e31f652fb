"""timm's Gemma 4 vision tower (``gemma4_vit_*``): ``Gemma4VitClassifier`` = ``encoder``
(``Gemma4VitEncoder``) + masked-mean pool + norm + head; and ``Gemma4VitEncoder`` built alone
(``gemma4_vit_*_enc``).

A pre-norm ("sandwich": four norms per block) ViT over the patch grid, no prefix tokens.
``Gemma4Attention``: separate q/k/v projections, RMS-normed q, k (and v), 2D RoPE on q and
k (position ids = the patch's (x, y)), grouped-query k/v repeated to every head, then
``F.scaled_dot_product_attention(q, k, v, attn_mask, scale=1.0)`` -- softmax token attention.

Two input modes, decided per call:

- **standard image path** (recorded): ``model(images)``, ``images`` ``[B, C, H, W]`` with H, W
  multiples of the patch. ``encoder.patch_embed`` patchifies row-major over the
  ``(H / ph, W / pw)`` grid with the default coordinates and no padding mask
  (``padding_positions`` None), so every query attends to every patch.
- **NaFlex input** (refused): a dict, pre-patchified patches, or ``patch_coord`` /
  ``patch_valid``: each image brings its own coordinates and padding, so the token layout
  belongs to the input, not the model. Refused before the model runs.

Hook points, per layer ``i`` (B batch, H heads, N = gh * gw patches), named as below in the
classifier and without the ``encoder.`` prefix for the encoder built alone:

- ``encoder.patch_embed`` (pre-hook: the mode check; forward hook: its returned position
  ids ``[B, N, 2]`` checked against the row-major grid the layout predicts).
- default path: ``encoder.blocks.{i}.attn`` is marked as running and its one SDPA call is
  seen by a ``TorchFunctionMode`` (``generic.SdpaTap``): q and k after norm and RoPE,
  ``scale=1.0``; ``softmax(q·kᵀ + mask)`` ``[B, H, N, N]`` is computed beside it, outputs
  bit-identical.
- gradient path: ``fused_attn`` off for the block; ``encoder.blocks.{i}.attn.attn_drop``
  (forward hook) receives the probabilities multiplied with v.

The ``*_enc`` variants (:class:`Gemma4VitEncoderAdapter`): the same tower at the model's root,
then the soft-token pooler (a spatial 3x3 average of the output tokens, no attention) instead
of the classifier's pool and head. Recorded exactly like the classifier's tower (NaFlex input
refused the same way); their forward returns soft tokens for a language model, not class
logits, so what needs a prediction refuses them with the reason (``vit_towers.TokensOnly``).
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn

from . import Adapter, RecordFn, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError
from .vit_towers import TokensOnly, VitTowerAdapter

_NAFLEX = ("Gemma 4 NaFlex input (a dict, pre-patchified patches, or patch_coord / patch_valid) is refused: "
           "each image then brings its own patch coordinates and padding mask, so the token layout belongs to "
           "the input, not to the model, and vitlens records one layout per forward. Call the model on a "
           "[B, C, H, W] image tensor (recorded exactly)")


@register_adapter
class Gemma4VitAdapter(VitTowerAdapter):
    """The tower structure (``encoder.blocks``, no prefix, row-major patch grid) is the other towers';
    the patch embedding, its input modes and the attention class are Gemma 4's."""

    family = "Gemma4 ViT"
    examples = ("gemma4_vit_167m", "gemma4_vit_570m")
    order = 10
    timm_modules = ("gemma4_vit",)
    model_classes = ("timm.models.gemma4_vit:Gemma4VitClassifier",)
    attention_classes = ("timm.models.gemma4_vit:Gemma4Attention",)
    test_models = (("gemma4_vit_167m", dict(embed_dim=64, depth=2, num_heads=4, head_dim=16,
                                            intermediate_size=128, pretrained_cfg_overlay=dict(input_size=(3, 48, 64)))),
                   ("gemma4_vit_167m", dict(embed_dim=64, depth=2, num_heads=4, head_dim=16, num_kv_heads=2,
                                            intermediate_size=128,
                                            pretrained_cfg_overlay=dict(input_size=(3, 48, 48)))))

    #: timm keeps no img_size on the Gemma 4 modules: the input size comes from the pretrained config
    default_input_size = Adapter.default_input_size

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None],
                chunk: int | str | None = None) -> None:
        current: dict[str, TokenLayout] = {}
        pe = self.tower.patch_embed

        def on_call(_m: nn.Module, args: tuple) -> None:
            x = args[0]
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or any(a is not None for a in args[1:3]):
                raise UnsupportedModelError(f"{type(self.model).__name__}: {_NAFLEX}")

        def on_patches(_m: nn.Module, args: tuple, out: Any) -> None:
            layout = self.layout_for(tuple(int(v) for v in args[0].shape[-2:]))
            gh, gw = layout.grid_size
            ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            expected = torch.stack([xs.flatten(), ys.flatten()], -1).to(out[1].device)  # internal (x, y)
            if out[2] is not None or out[1].shape[1:] != expected.shape or not bool((out[1] == expected).all()):
                raise UnsupportedModelError(
                    f"{self.point('patch_embed')} produced position ids or a padding mask other than the row-major "
                    f"{layout.grid_size} grid vitlens predicted; this model's forward differs from what vitlens expects")
            current["layout"] = layout
            set_layout(layout)

        stack.callback(pe.register_forward_pre_hook(on_call).remove)
        stack.callback(pe.register_forward_hook(on_patches).remove)
        if not grad:
            layers = self._install_sdpa(stack, layers, record, heads, rows, current, chunk)
        self._install_unfused(stack, layers, record, heads, rows, current)


@register_adapter
class Gemma4VitEncoderAdapter(TokensOnly, Gemma4VitAdapter):
    """``Gemma4VitEncoder`` built alone (``gemma4_vit_*_enc``): the classifier's tower at the model's root.
    Its soft-token pooler runs after the blocks and is no attention; NaFlex input is refused as for the
    classifier (same patch-embedding hooks)."""

    family = "Gemma4 ViT encoder"
    examples = ("gemma4_vit_167m_enc", "gemma4_vit_570m_enc")
    model_classes = ("timm.models.gemma4_vit:Gemma4VitEncoder",)
    tower_path = ""
    # the default soft-token pooler needs H and W divisible by patch * 3 = 48
    test_models = (("gemma4_vit_167m_enc", dict(embed_dim=64, depth=2, num_heads=4, head_dim=16,
                                                intermediate_size=128,
                                                pretrained_cfg_overlay=dict(input_size=(3, 48, 96)))),
                   ("gemma4_vit_167m_enc", dict(embed_dim=64, depth=2, num_heads=4, head_dim=16, num_kv_heads=2,
                                                intermediate_size=128,
                                                pretrained_cfg_overlay=dict(input_size=(3, 96, 48)))))
