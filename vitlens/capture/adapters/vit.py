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

from typing import Any, Callable

import torch
from torch import nn

from . import RecordFn, register_adapter
from ..cache import TokenLayout
from .generic import BlocksAdapter, prefix_names_of  # noqa: F401  (re-exported)

_ATTN_ATTRS = ("qkv", "q_norm", "k_norm", "attn_drop", "fused_attn", "num_heads", "scale")


def _is_timm_attention(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in _ATTN_ATTRS)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float,
                    attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                    rows: slice = slice(None)) -> torch.Tensor:
    """``softmax(q[rows]·kᵀ·scale + mask)`` in float32, as timm's unfused path computes it.

    Args:
        q, k: ``[B, H, T, d]`` after q/k normalisation.
        scale: the module's ``scale`` (``d ** -0.5``).
        attn_mask: additive float mask or boolean keep-mask broadcastable to ``[B, H, T, T]``.
        is_causal: apply a causal mask.
        rows: which query rows to compute (``slice(0, P)`` for the prefix rows only).
    """
    # q and k are strided views of timm's qkv output; one contiguous copy of each (small:
    # T x d per head) lets the T x T product run ~25% faster than on the views.
    qf = (q[:, :, rows].float() * scale).contiguous()
    scores = qf @ k.float().contiguous().transpose(-2, -1)
    n_q, n_k = q.shape[-2], k.shape[-2]
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores.masked_fill_(~causal[rows], float("-inf"))
    if attn_mask is not None:
        mask = attn_mask[..., rows, :] if attn_mask.shape[-2] == n_q else attn_mask
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.float())
    # in place: the probabilities are the one B x H x T x T tensor this writes (no second
    # one for the scores), which halves the memory traffic of recording a layer
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


@register_adapter
class VitAdapter(BlocksAdapter):
    family = "VisionTransformer"
    examples = ("vit_base_patch16_224", "deit_tiny_distilled_patch16_224",
                "vit_small_patch14_reg4_dinov2", "vit_medium_patch16_gap_256")
    order = 0
    timm_modules = ("vision_transformer", "deit")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer
        if not isinstance(model, VisionTransformer):
            return False
        return all(_is_timm_attention(getattr(b, "attn", None) or nn.Module()) for b in model.blocks)

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """``blocks.{layer}.attn.q_norm`` and ``.k_norm``: q and k ``[B, H, T, d]``; logits = scale·q·kᵀ (+ mask)."""
        attn = self.attention_modules()[layer][1]
        return attn.q_norm, attn.k_norm

    def install(self, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]):
        if grad:
            return super().install(layers, record, heads=heads, rows=rows, grad=grad, set_layout=set_layout)
        current: dict[str, TokenLayout] = {}
        handles = [self._install_layout_hook(set_layout, current)]
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

            handles.append(attn.register_forward_pre_hook(on_call, with_kwargs=True))
            handles.append(attn.q_norm.register_forward_hook(on_q))
            handles.append(attn.k_norm.register_forward_hook(on_k))
        return handles, []
