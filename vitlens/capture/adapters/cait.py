"""timm CaiT (``cait_*``, Touvron et al. 2021, https://arxiv.org/abs/2103.17239): talking-heads
self-attention over the patch tokens, then class-attention layers in which only the class
token queries.

Layers, in forward order (B batch, H heads, N = gh * gw patches, no prefix tokens in the
input sequence: the class token joins only in the class-attention layers):

- ``blocks.{i}.attn`` (``TalkingHeadAttn``, kind ``"self"``, ``softmax=False``):
  ``W = proj_w(softmax(proj_l(q·kᵀ·scale)))`` with ``proj_l`` / ``proj_w`` linear maps
  across the heads (Shazeer et al. 2020, talking-heads attention). ``W`` is what the
  model multiplies with v and is what vitlens records, ``[B, H, N, N]``. Because
  ``proj_w`` mixes the heads (and adds a bias) *after* the softmax, its rows do not sum
  to 1 and can be negative: the layer is declared ``softmax=False`` (``LayerSpec``), the
  recorder checks only that the weights are finite, and analyses that need probabilities
  (rollout, CLS maps, distances, entropy) refuse these layers with the reason.
- ``blocks_token_only.{j}.attn`` (``ClassAttn``, kind ``"class"``): the class token
  queries ``[CLS, patches]``: ``[B, H, 1, 1 + N]`` softmax probabilities.

Hook points:

- ``patch_embed`` (pre-hook): image ``[B, C, H_in, W_in]`` -> token layout (no prefix
  tokens, fixed grid: the position embedding has the configured size).
- ``blocks.{i}.attn.attn_drop`` (forward hook): talking-heads weights ``[B, H, N, N]``.
  The module has no fused path, so nothing is switched; outputs are bit-identical.
- ``blocks_token_only.{j}.attn``: default path, its ``F.scaled_dot_product_attention(q,
  k, v)`` call is seen by a ``TorchFunctionMode`` (``generic.SdpaTap``) and the
  probabilities computed beside it (outputs bit-identical); ``grad=True``: ``fused_attn``
  off for the block and ``...attn.attn_drop`` (forward hook) gives the probabilities the
  model multiplies with v.

``rows="prefix"`` is refused (the input sequence has no prefix tokens). Grad-CAM reads
``blocks.{i}.norm1`` (patch tokens entering self-attention block i).
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch
from torch import nn

from . import Adapter, RecordFn, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError
from .generic import SdpaCall, SdpaTap, _to_pair, set_unfused

_CAIT = "timm.models.cait"


@register_adapter
class CaitAdapter(Adapter):
    family = "CaiT"
    examples = ("cait_xxs24_224", "cait_s24_384")
    order = 10
    timm_modules = ("cait",)
    model_classes = (f"{_CAIT}:Cait",)
    attention_classes = (f"{_CAIT}:TalkingHeadAttn", f"{_CAIT}:ClassAttn")
    test_models = (("cait_xxs24_224", dict(img_size=48, depth=2, depth_token_only=2)),
                   ("cait_xxs24_224", dict(img_size=(32, 64), depth=1, depth_token_only=1, embed_dim=96,
                                           num_heads=3)))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return ([(f"blocks.{i}.attn", b.attn) for i, b in enumerate(model.blocks)]
                + [(f"blocks_token_only.{j}.attn", b.attn) for j, b in enumerate(model.blocks_token_only)])

    def _n_self(self) -> int:
        return len(self.model.blocks)

    def layer_kind(self, layer: int) -> str:
        return "self" if layer < self._n_self() else "class"

    def layer_softmax(self, layer: int) -> bool:
        return layer >= self._n_self()  # talking heads mix the heads after the softmax

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        pe = self.model.patch_embed
        return TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=_to_pair(pe.grid_size),
                           patch_size=_to_pair(pe.patch_size), input_size=tuple(image_hw))

    def layer_geometry(self, layer: int, layout: TokenLayout, windows: list) -> dict:
        if self.layer_kind(layer) == "self":
            return super().layer_geometry(layer, layout, windows)
        return dict(num_queries=1, num_keys=1 + layout.num_patches, query_grid=None, key_grid=layout.grid_size,
                    query_prefix=1, key_prefix=1, stride=layout.patch_size)

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        return tuple(f"blocks.{i}.norm1" for i in range(self._n_self())), "tokens"

    def block_points(self) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}", b) for i, b in enumerate(self.model.blocks)]

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]) -> None:
        if rows != "all":  # the recorder refuses it first (no prefix tokens); keep the adapter closed too
            raise ValueError(f"rows={rows!r}: CaiT's input sequence has no prefix tokens; use rows='all'")
        current: dict[str, TokenLayout] = {}
        self._install_layout_hook(stack, set_layout, current)
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()

        def check(layer: int, n_keys: int, path: str) -> None:
            layout = current.get("layout")
            want = None if layout is None else self.layer_geometry(layer, layout, [])["num_keys"]
            if want != n_keys:
                raise UnsupportedModelError(
                    f"{path} saw {n_keys} keys but the token layout predicts {want}; "
                    f"this model's forward differs from what vitlens expects")

        def select(p: torch.Tensor) -> torch.Tensor:
            return p if head_index is None else p.index_select(1, head_index.to(p.device))

        tap = SdpaTap()
        for layer in layers:
            path, attn = modules[layer]
            if self.layer_kind(layer) == "self" or grad or not attn.fused_attn:
                def on_weights(_m: nn.Module, inp: tuple, out: torch.Tensor, layer: int = layer,
                               path: str = path) -> None:
                    check(layer, out.shape[-1], path)
                    record(layer, select(out if grad else inp[0]))

                if hasattr(attn, "fused_attn"):
                    set_unfused(stack, attn)
                stack.callback(attn.attn_drop.register_forward_hook(on_weights).remove)
                continue

            def on_sdpa(call: SdpaCall, layer: int = layer, path: str = path) -> None:
                check(layer, call.num_keys, path)
                record(layer, call.probs(head_index))

            tap.watch(stack, layer, path, attn, on_sdpa)
        tap.activate(stack)
