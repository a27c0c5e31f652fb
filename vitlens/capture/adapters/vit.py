"""timm VisionTransformer family: vit_*, deit_*, deit3_*, flexivit, DINOv2 (with registers),
CLIP image towers, global-pool models, and VisionTransformerDistilled (DeiT distilled).

Hook points, per recorded layer ``i`` (timm module paths; shapes for batch B, heads H,
sequence T, head dim d):

- ``patch_embed`` (pre-hook): input image ``[B, C, H_in, W_in]`` -> token layout.
- ``blocks.{i}.attn`` (pre-hook): keyword ``attn_mask`` / ``is_causal``, if any.
- recompute path (default): ``blocks.{i}.attn.q_norm`` -> q ``[B, H, T, d]`` and
  ``blocks.{i}.attn.k_norm`` -> k ``[B, H, T, d]``; the probabilities
  ``softmax(q·kᵀ·scale + mask)`` are computed beside the module, which keeps its fused
  kernel, so the model's outputs are bit-identical.
- gradient path (``grad=True``): ``blocks.{i}.attn.fused_attn`` is set to False for the
  block and ``blocks.{i}.attn.attn_drop`` -> probabilities ``[B, H, T, T]`` are the very
  tensor the model multiplies with v, so gradients reach them.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn

from . import RecordFn, register_adapter
from ..cache import TokenLayout
from .generic import BlocksAdapter, attention_probs, prefix_names_of  # noqa: F401  (re-exported)


@register_adapter
class VitAdapter(BlocksAdapter):
    family = "VisionTransformer"
    examples = ("vit_base_patch16_224", "deit_tiny_distilled_patch16_224",
                "vit_small_patch14_reg4_dinov2", "vit_medium_patch16_gap_256")
    order = 0
    timm_modules = ("vision_transformer", "deit")
    model_classes = ("timm.models.vision_transformer:VisionTransformer",
                     "timm.models.deit:VisionTransformerDistilled")
    attention_classes = ("timm.layers.attention:Attention",)
    token_drop = True
    test_models = (("vit_tiny_patch16_224", dict(img_size=64)),
                   ("deit_tiny_distilled_patch16_224", dict(img_size=64)),
                   ("vit_small_patch14_reg4_dinov2", dict(img_size=56, depth=2)),
                   ("vit_medium_patch16_gap_256", dict(img_size=64, depth=2)),
                   ("vit_base_patch16_224", dict(img_size=(48, 80), depth=2, qk_norm=True)))

    def forward_kept(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Run the ViT on its prefix tokens and the patch tokens ``keep`` (``[B, k]``) only.

        The image is patch-embedded and the position embeddings are added (timm's
        ``_pos_embed``, prefix tokens included) *before* any token is dropped; the blocks,
        final norm and head then run unchanged on ``[prefix, x[keep[b, 0]], ...]``. With
        every index in order the result is bit-identical to ``model(images)``.
        """
        m = self.model
        x = m._pos_embed(m.patch_embed(images))
        P = self.num_prefix_tokens
        n = x.shape[1] - P
        if keep.dim() != 2 or keep.shape[0] != x.shape[0]:
            raise ValueError(f"keep must be [B, k] patch indices for B={x.shape[0]} images, "
                             f"got shape {tuple(keep.shape)}")
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
            raise ValueError(f"keep holds patch indices outside 0..{n - 1} (this input has {n} patches)")
        idx = keep.to(device=x.device, dtype=torch.long)[:, :, None].expand(-1, -1, x.shape[-1])
        x = torch.cat([x[:, :P], x[:, P:].gather(1, idx)], dim=1)
        x = m.norm(m.blocks(m.norm_pre(m.patch_drop(x))))
        return m.forward_head(x)

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """``blocks.{layer}.attn.q_norm`` and ``.k_norm``: q and k ``[B, H, T, d]``; logits = scale·q·kᵀ (+ mask)."""
        attn = self.attention_modules()[layer][1]
        return attn.q_norm, attn.k_norm

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]) -> None:
        if grad:
            return super().install(stack, layers, record, heads=heads, rows=rows, grad=grad, set_layout=set_layout)
        current: dict[str, TokenLayout] = {}
        self._install_layout_hook(stack, set_layout, current)
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()

        for layer in layers:
            path, attn = modules[layer]
            state: dict[str, Any] = {}

            def on_call(_m: nn.Module, args: tuple, kwargs: dict, state: dict = state) -> None:
                state.clear()
                state["attn_mask"] = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
                state["is_causal"] = bool(kwargs.get("is_causal", args[2] if len(args) > 2 else False))

            def on_q(_m: nn.Module, _inp: tuple, q: torch.Tensor, state: dict = state) -> None:
                state["q"] = q

            def on_k(_m: nn.Module, _inp: tuple, k: torch.Tensor, state: dict = state,
                     attn: nn.Module = attn, layer: int = layer, path: str = path) -> None:
                q = state.pop("q")
                n_prefix = self._n_prefix(current, k.shape[-2], path)
                with torch.no_grad():
                    if head_index is not None:
                        idx = head_index.to(q.device)
                        q, k = q.index_select(1, idx), k.index_select(1, idx)
                    p = attention_probs(q, k, float(attn.scale), state.get("attn_mask"),
                                        state.get("is_causal", False),
                                        slice(0, n_prefix) if rows == "prefix" else slice(None))
                record(layer, p.to(q.dtype) if q.dtype != p.dtype else p)

            stack.callback(attn.register_forward_pre_hook(on_call, with_kwargs=True).remove)
            stack.callback(attn.q_norm.register_forward_hook(on_q).remove)
            stack.callback(attn.k_norm.register_forward_hook(on_k).remove)
        return None
