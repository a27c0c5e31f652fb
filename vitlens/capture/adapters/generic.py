"""Generic path: any timm model whose blocks follow the ``fused_attn`` + ``attn_drop`` pattern.

Hook points, per recorded layer ``i`` (B batch, H heads, T tokens):

- ``patch_embed`` (pre-hook): input image ``[B, C, H_in, W_in]`` -> token layout.
- ``blocks.{i}.attn.fused_attn`` is set to False for the duration of the ``with`` block
  (restored on exit) so timm materialises the probabilities, and
  ``blocks.{i}.attn.attn_drop`` (forward hook) -> ``[B, H, T, T]``: the very tensor the
  model multiplies with v (relative position bias, RoPE, masks all included). It stays
  attached to the autograd graph, which gradient methods need.

Families built on this: BEiT/BEiTv2 (``beit.py``), EVA/EVA02 (``eva.py``), the
VisionTransformer gradient path (``vit.py``), and a fallback for other timm models with
the same structure (``order`` 100: tried after every specific adapter).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from . import Adapter, RecordFn, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError


def _to_pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def prefix_names_of(model: nn.Module) -> tuple[str, ...]:
    """Names of the prefix tokens in the order timm's ``_pos_embed`` concatenates them."""
    names: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        names.append("cls")
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    reg = getattr(model, "reg_token", None)
    n_reg = int(reg.shape[1]) if isinstance(reg, torch.Tensor) else int(getattr(model, "num_reg_tokens", 0) or 0)
    names += ["reg"] * n_reg
    if len(names) != int(getattr(model, "num_prefix_tokens", len(names))):
        raise UnsupportedModelError(
            f"{type(model).__name__} reports num_prefix_tokens={model.num_prefix_tokens} but "
            f"vitlens found prefix tokens {names}; this model variant is not supported")
    return tuple(names)


def token_layout(model: nn.Module, image_hw: tuple[int, int]) -> TokenLayout:
    """Token layout of a plain (non-hierarchical) timm ViT for an input of ``image_hw`` pixels."""
    pe = model.patch_embed
    if getattr(model, "dynamic_img_size", False):
        grid = _to_pair(pe.dynamic_feat_size(image_hw))
    else:
        grid = _to_pair(pe.grid_size)
    names = prefix_names_of(model)
    return TokenLayout(num_prefix_tokens=len(names), prefix_names=names, grid_size=grid,
                       patch_size=_to_pair(pe.patch_size), input_size=tuple(image_hw))


def _has_unfused_path(m: Any) -> bool:
    return isinstance(m, nn.Module) and hasattr(m, "fused_attn") and isinstance(
        getattr(m, "attn_drop", None), nn.Module) and hasattr(m, "num_heads")


@register_adapter
class BlocksAdapter(Adapter):
    """Plain timm ViT-like models: ``patch_embed`` + ``blocks[i].attn`` with the unfused path."""

    family = "timm ViT-like (fused_attn + attn_drop)"
    examples = ("any timm model with patch_embed and blocks[i].attn.fused_attn/attn_drop",)
    order = 100
    timm_modules = ()  # a fallback for models passed in; none listed as supported by name

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        pe, blocks = getattr(model, "patch_embed", None), getattr(model, "blocks", None)
        return (cls.is_model_class(model) and pe is not None and hasattr(pe, "grid_size") and hasattr(pe, "patch_size")
                and isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0
                and hasattr(model, "num_prefix_tokens")
                and all(_has_unfused_path(getattr(b, "attn", None)) for b in blocks))

    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(self.model.blocks)]

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[0].attn.num_heads)

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        """Token layout for an input of ``image_hw`` pixels."""
        return token_layout(self.model, image_hw)

    # ------------------------------------------------------------------ helpers
    def _install_layout_hook(self, set_layout: Callable[[TokenLayout], None],
                             current: dict[str, TokenLayout]) -> torch.utils.hooks.RemovableHandle:
        def on_image(_module: nn.Module, args: tuple) -> None:
            layout = self.layout_for(tuple(args[0].shape[-2:]))
            current["layout"] = layout
            set_layout(layout)

        return self.model.patch_embed.register_forward_pre_hook(on_image)

    @staticmethod
    def _n_prefix(current: dict[str, TokenLayout], n_tokens: int, path: str) -> int:
        """Check the sequence length against the layout; return the prefix count."""
        layout = current.get("layout")
        if layout is None or layout.num_tokens != n_tokens:
            raise UnsupportedModelError(
                f"{path} saw {n_tokens} tokens but the token layout predicts "
                f"{layout.num_tokens if layout else 'none (patch_embed did not run)'}; "
                f"this model's forward differs from what vitlens expects")
        return layout.num_prefix_tokens

    def _install_unfused(self, layers: list[int], record: RecordFn, heads: list[int] | None, rows: str,
                         current: dict[str, TokenLayout]):
        handles, restores = [], []
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()
        for layer in layers:
            path, attn = modules[layer]

            def on_probs(_m: nn.Module, _inp: tuple, out: torch.Tensor, layer: int = layer,
                         path: str = path) -> None:
                n_prefix = self._n_prefix(current, out.shape[-1], path)
                p = out if head_index is None else out.index_select(1, head_index.to(out.device))
                record(layer, p[:, :, :n_prefix] if rows == "prefix" else p)

            old = attn.fused_attn
            attn.fused_attn = False
            restores.append(lambda attn=attn, old=old: setattr(attn, "fused_attn", old))
            handles.append(attn.attn_drop.register_forward_hook(on_probs))
        return handles, restores

    def install(self, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]):
        current: dict[str, TokenLayout] = {}
        handles = [self._install_layout_hook(set_layout, current)]
        more, restores = self._install_unfused(layers, record, heads, rows, current)
        return handles + more, restores
