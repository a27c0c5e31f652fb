"""timm ConViT (``timm.models.convit.ConVit``, ``convit_*``): gated positional self-attention
(GPSA) blocks over the patches, then ordinary self-attention (MHSA) blocks after the class
token joins.

Forward: ``patch_embed`` -> patch tokens ``[B, N, D]`` (no prefix token; N = gh * gw, a
square grid); blocks ``0 .. local_up_to_layer - 1`` are GPSA; before block
``local_up_to_layer`` the class token is prepended, so the MHSA blocks see ``[B, 1 + N, D]``.

Recorded per layer ``blocks.{i}.attn`` (B batch, H heads), the weights the module
multiplies with v, taken at ``blocks.{i}.attn.attn_drop`` (forward hook; neither class has
a fused path, so the default path changes nothing and outputs stay bit-identical):

- GPSA (``i < local_up_to_layer``), ``[B, H, N, N]``: per head,
  ``(1 - σ(g_h)) · softmax(q·kᵀ·scale) + σ(g_h) · softmax(pos_proj(rel_indices))``, divided by
  its row sum -- a convex mixture of a content and a positional softmax, so every row is a
  probability distribution over the keys (``LayerSpec.softmax`` True: rows sum to 1, the
  recorder checks it), but it is *not* one softmax: it is what the model applies to v.
- MHSA (``i >= local_up_to_layer``), ``[B, H, 1 + N, 1 + N]``: ``softmax(q·kᵀ·scale)`` over
  the class token and the patches (``query_prefix = key_prefix = 1``).

The token layout is the input sequence's (the patch grid, no prefix tokens, like CaiT): the
MHSA layers, whose sequence also holds the class token, are not on it, so token analyses
(rollout, CLS maps, distances) refuse them with the reason and run on the GPSA layers; read
the class token's row of an MHSA layer directly (``cache.attention(l)[:, :, 0, 1:]``).
Grad-CAM reads the patch tokens entering the GPSA blocks (``blocks.{i}.norm1``, ``[B, N, D]``).
With ``grad=True`` the recorded tensor is the ``attn_drop`` output, multiplied with v.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch
from torch import nn

from . import Adapter, RecordFn, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError
from .generic import _to_pair


@register_adapter
class ConVitAdapter(Adapter):
    family = "ConViT"
    examples = ("convit_tiny", "convit_small")
    order = 10
    timm_modules = ("convit",)
    model_classes = ("timm.models.convit:ConVit",)
    attention_classes = ("timm.models.convit:GPSA", "timm.models.convit:MHSA")
    test_models = (("convit_tiny", dict(img_size=48, depth=3, local_up_to_layer=2, embed_dim=64, num_heads=4)),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(model.blocks)]

    def _gpsa(self, layer: int) -> bool:
        return layer < int(self.model.local_up_to_layer) or self.model.cls_token is None

    def default_input_size(self) -> tuple[int, int]:
        return _to_pair(self.model.patch_embed.img_size)

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        pe = self.model.patch_embed
        (ph, pw) = _to_pair(pe.patch_size)
        return TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=(image_hw[0] // ph, image_hw[1] // pw),
                           patch_size=(ph, pw), input_size=tuple(image_hw))

    def layer_geometry(self, layer: int, layout: TokenLayout, windows: list) -> dict:
        P = 0 if self._gpsa(layer) else 1
        n = P + layout.num_patches
        return dict(num_queries=n, num_keys=n, query_grid=layout.grid_size, key_grid=layout.grid_size,
                    query_prefix=P, key_prefix=P, stride=layout.patch_size)

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """Patch tokens entering the GPSA blocks, ``blocks.{i}.norm1`` ``[B, N, D]`` (no class token yet)."""
        n = len(self.model.blocks) if self.model.cls_token is None else int(self.model.local_up_to_layer)
        return tuple(f"blocks.{i}.norm1" for i in range(n)), "tokens"

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]) -> None:
        if rows != "all":  # the recorder refuses it first (no prefix tokens); keep the adapter closed too
            raise ValueError(f"rows={rows!r}: ConViT's input sequence has no prefix tokens (the class token joins "
                             f"at block {self.model.local_up_to_layer}); use rows='all'")
        current: dict[str, TokenLayout] = {}
        self._install_layout_hook(stack, set_layout, current)
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()
        for layer in layers:
            path, attn = modules[layer]

            def on_weights(_m: nn.Module, inp: tuple, out: torch.Tensor, layer: int = layer,
                           path: str = path) -> None:
                layout = current.get("layout")
                want = None if layout is None else self.layer_geometry(layer, layout, [])["num_keys"]
                if out.dim() != 4 or out.shape[-1] != want or out.shape[-2] != want:
                    raise UnsupportedModelError(
                        f"{path} applied weights of shape {tuple(out.shape)} but vitlens predicted "
                        f"[B, heads, {want}, {want}]; this model's forward differs from what vitlens expects")
                p = out if grad else inp[0]
                record(layer, p if head_index is None else p.index_select(1, head_index.to(p.device)))

            stack.callback(attn.attn_drop.register_forward_hook(on_weights).remove)
