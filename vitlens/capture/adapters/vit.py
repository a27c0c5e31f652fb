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

from . import Adapter, RecordFn, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError

_ATTN_ATTRS = ("qkv", "q_norm", "k_norm", "attn_drop", "fused_attn", "num_heads", "scale")


def _is_timm_attention(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in _ATTN_ATTRS)


def _to_pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def prefix_names_of(model: nn.Module) -> tuple[str, ...]:
    """Names of the prefix tokens in the order timm's ``_pos_embed`` concatenates them."""
    names: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        names.append("cls")
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    names += ["reg"] * int(getattr(model, "num_reg_tokens", 0) or 0)
    if len(names) != model.num_prefix_tokens:
        raise UnsupportedModelError(
            f"{type(model).__name__} reports num_prefix_tokens={model.num_prefix_tokens} but "
            f"vitlens found prefix tokens {names}; this VisionTransformer variant is not supported")
    return tuple(names)


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
    qf = q[:, :, rows].float() * scale
    scores = qf @ k.float().transpose(-2, -1)
    n_q, n_k = q.shape[-2], k.shape[-2]
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal[rows], float("-inf"))
    if attn_mask is not None:
        mask = attn_mask[..., rows, :] if attn_mask.shape[-2] == n_q else attn_mask
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return scores.softmax(dim=-1)


@register_adapter
class VitAdapter(Adapter):
    family = "VisionTransformer"
    examples = ("vit_base_patch16_224", "deit_tiny_distilled_patch16_224",
                "vit_small_patch14_reg4_dinov2", "vit_medium_patch16_gap_256")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer
        if not isinstance(model, VisionTransformer):
            return False
        return all(_is_timm_attention(getattr(b, "attn", None) or nn.Module()) for b in model.blocks)

    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(self.model.blocks)]

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[0].attn.num_heads)

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        """Token layout for an input of ``image_hw`` pixels."""
        pe = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False):
            grid = _to_pair(pe.dynamic_feat_size(image_hw))
        else:
            grid = _to_pair(pe.grid_size)
        return TokenLayout(num_prefix_tokens=int(self.model.num_prefix_tokens),
                           prefix_names=prefix_names_of(self.model), grid_size=grid,
                           patch_size=_to_pair(pe.patch_size), input_size=tuple(image_hw))

    def install(self, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]):
        handles: list[torch.utils.hooks.RemovableHandle] = []
        restores: list[Callable[[], None]] = []
        current: dict[str, TokenLayout] = {}

        def on_image(_module: nn.Module, args: tuple) -> None:
            layout = self.layout_for(tuple(args[0].shape[-2:]))
            current["layout"] = layout
            set_layout(layout)

        handles.append(self.model.patch_embed.register_forward_pre_hook(on_image))
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()

        for layer in layers:
            path, attn = modules[layer]
            state: dict[str, Any] = {}

            def check_tokens(n_tokens: int, path: str = path) -> int:
                layout = current.get("layout")
                if layout is None or layout.num_tokens != n_tokens:
                    raise UnsupportedModelError(
                        f"{path} saw {n_tokens} tokens but the token layout predicts "
                        f"{layout.num_tokens if layout else 'none (patch_embed did not run)'}; "
                        f"this model's forward differs from timm's VisionTransformer")
                return layout.num_prefix_tokens

            def select(p: torch.Tensor) -> torch.Tensor:
                return p if head_index is None else p.index_select(1, head_index.to(p.device))

            if grad:
                def on_probs(_m: nn.Module, _inp: tuple, out: torch.Tensor, layer: int = layer) -> None:
                    n_prefix = check_tokens(out.shape[-1])
                    p = select(out)
                    record(layer, p[:, :, :n_prefix] if rows == "prefix" else p)

                old = attn.fused_attn
                attn.fused_attn = False
                restores.append(lambda attn=attn, old=old: setattr(attn, "fused_attn", old))
                handles.append(attn.attn_drop.register_forward_hook(on_probs))
                continue

            def on_call(_m: nn.Module, args: tuple, kwargs: dict, state: dict = state) -> None:
                state.clear()
                state["attn_mask"] = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
                state["is_causal"] = bool(kwargs.get("is_causal", args[2] if len(args) > 2 else False))

            def on_q(_m: nn.Module, _inp: tuple, q: torch.Tensor, state: dict = state) -> None:
                state["q"] = q

            def on_k(_m: nn.Module, _inp: tuple, k: torch.Tensor, state: dict = state,
                     attn: nn.Module = attn, layer: int = layer) -> None:
                q = state.pop("q")
                n_prefix = check_tokens(k.shape[-2])
                with torch.no_grad():
                    if head_index is not None:
                        q, k = select(q), select(k)
                    p = attention_probs(q, k, float(attn.scale), state.get("attn_mask"),
                                        state.get("is_causal", False),
                                        slice(0, n_prefix) if rows == "prefix" else slice(None))
                record(layer, p.to(q.dtype) if q.dtype != p.dtype else p)

            handles.append(attn.register_forward_pre_hook(on_call, with_kwargs=True))
            handles.append(attn.q_norm.register_forward_hook(on_q))
            handles.append(attn.k_norm.register_forward_hook(on_k))
        return handles, restores
