"""timm VisionTransformerSAM (``samvit_*``, the Segment Anything image encoder, Kirillov et
al. 2023): a plain ViT on an NHWC patch grid, no prefix tokens, with windowed blocks
(non-overlapping, unshifted windows, the grid zero-padded up to a multiple of the window)
and a few global blocks (``global_attn_indexes``), decomposed relative position bias
(or RoPE) added inside the attention.

Every block is recorded as windowed attention (kind ``"window"``, like Swin, see
``docs/swin.md``): a windowed block as ``[B, nW, H, n, n]`` (n = window area, padding
included), a global block as one window covering the whole grid, ``[B, 1, H, N, N]``
(N = gh * gw). ``cache.layout_of(l)`` gives each block's :class:`WindowLayout` (shift 0)
and ``cache.dense_attention(l)`` the ``[B, H, N, N]`` matrix on the patch grid (padding
cropped; the padding keys are real, unmasked zero tokens in SAM, so a windowed row's mass
on them is not in the dense matrix).

Hook points, per block ``i`` (B batch, heads h):

- ``patch_embed`` (forward hook): image ``[B, C, H_in, W_in]`` -> NHWC grid
  ``[B, gh, gw, C]``: the token layout (no prefix) and every block's window layout.
- ``blocks.{i}`` (pre-hook): block input ``[B, gh, gw, C]``, checked against the layout.
- default path: ``blocks.{i}.attn`` calls ``F.scaled_dot_product_attention(q, k, v,
  attn_mask=bias)`` with q, k ``[B*nW*h, n, d]`` (after RoPE when used) and the
  decomposed relative position bias ``[B*nW*h, n, n]``; a ``TorchFunctionMode``
  (``generic.SdpaTap``) sees the call and computes ``softmax(q·kᵀ·scale + bias)`` beside
  it; outputs bit-identical.
- gradient path: ``blocks.{i}.attn.fused_attn`` off for the block, and
  ``blocks.{i}.attn.attn_drop`` (forward hook) gets ``[B*nW*h, n, n]``, recorded as
  ``[B, nW, h, n, n]``; the model goes on with a view of it, so gradients reach it.

Grad-CAM reads the block outputs ``blocks.{i}`` (``[B, gh, gw, C]``, NHWC).
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch
from torch import nn

from . import Adapter, RecordFn, register_adapter
from ..cache import TokenLayout, WindowLayout
from ...errors import UnsupportedModelError
from .generic import SdpaCall, SdpaTap, _to_pair, set_unfused

_SAM = "timm.models.vision_transformer_sam"


@register_adapter
class SamAdapter(Adapter):
    family = "SAM-ViT"
    examples = ("samvit_base_patch16", "samvit_base_patch16_224")
    order = 10
    timm_modules = ("vision_transformer_sam",)
    model_classes = (f"{_SAM}:VisionTransformerSAM",)
    attention_classes = (f"{_SAM}:Attention",)
    test_models = (("samvit_base_patch16", dict(img_size=64, depth=3, embed_dim=64, num_heads=2, window_size=3,
                                                global_attn_indexes=(1,), neck_chans=16)),
                   ("samvit_base_patch16", dict(img_size=64, depth=2, embed_dim=64, num_heads=4, window_size=4,
                                                global_attn_indexes=(1,), neck_chans=16, use_rel_pos=False,
                                                use_rope=True)),
                   ("samvit_base_patch16_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=2,
                                                    window_size=2, global_attn_indexes=(1,))))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(model.blocks)]

    def layer_kind(self, layer: int) -> str:
        return "window"

    def _grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        ph, pw = _to_pair(self.model.patch_embed.patch_size)
        return image_hw[0] // ph, image_hw[1] // pw

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        return self._layouts(image_hw, self._grid(image_hw))[0]

    def window_layouts(self, image_hw: tuple[int, int]) -> list[WindowLayout]:
        return self._layouts(image_hw, self._grid(image_hw))[1]

    def _layouts(self, image_hw: tuple[int, int], grid: tuple[int, int]) -> tuple[TokenLayout, list[WindowLayout]]:
        patch = _to_pair(self.model.patch_embed.patch_size)
        token = TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=grid, patch_size=patch,
                            input_size=tuple(image_hw))
        windows = []
        for i, b in enumerate(self.model.blocks):
            ws = int(b.window_size)
            win = (ws, ws) if ws > 0 else grid  # a global block: one window over the grid
            n_win = -(-grid[0] // win[0]) * -(-grid[1] // win[1])
            windows.append(WindowLayout(layer=i, stage=0, grid_size=grid, window_size=win, shift_size=(0, 0),
                                        num_windows=n_win, patch_size=patch))
        return token, windows

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        return tuple(f"blocks.{i}" for i in range(len(self.model.blocks))), "nhwc"

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout | WindowLayout], None]) -> None:
        current: dict[int, WindowLayout] = {}

        def on_patches(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if out.ndim != 4:
                raise UnsupportedModelError(f"patch_embed returned shape {tuple(out.shape)}; vitlens expects "
                                            f"SAM's NHWC patch grid [B, H, W, C]")
            token, windows = self._layouts(tuple(args[0].shape[-2:]), (int(out.shape[1]), int(out.shape[2])))
            set_layout(token)
            for wl in windows:
                current[wl.layer] = wl
                set_layout(wl)

        stack.callback(self.model.patch_embed.register_forward_hook(on_patches).remove)
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()
        tap = SdpaTap()

        def windowed(layer: int, p: torch.Tensor, path: str) -> torch.Tensor:
            """``[B*nW*h, n, n]`` -> ``[B, nW, h, n, n]``, checked against the window layout."""
            wl, h = current.get(layer), int(modules[layer][1].num_heads)
            n = wl.window_area if wl else -1
            if wl is None or p.dim() != 3 or p.shape[-1] != n or p.shape[-2] != n or p.shape[0] % (wl.num_windows * h):
                raise UnsupportedModelError(
                    f"{path} computed attention of shape {tuple(p.shape)} but the window layout predicts "
                    f"[B*{wl.num_windows if wl else '?'}*{h}, {n}, {n}]; this model's forward differs from timm's SAM")
            return p.reshape(-1, wl.num_windows, h, n, n)

        def select(p: torch.Tensor) -> torch.Tensor:
            return p if head_index is None else p.index_select(2, head_index.to(p.device))

        for layer in layers:
            path, attn = modules[layer]
            blk = self.model.blocks[layer]

            def on_block(_m: nn.Module, args: tuple, layer: int = layer) -> None:
                x, wl = args[0], current.get(layer)
                if wl is None or x.ndim != 4 or tuple(x.shape[1:3]) != wl.grid_size:
                    raise UnsupportedModelError(
                        f"blocks.{layer} got input {tuple(x.shape)} but vitlens predicted the NHWC grid "
                        f"{wl.grid_size if wl else '(none: patch_embed did not run)'}")

            stack.callback(blk.register_forward_pre_hook(on_block).remove)
            if grad or not attn.fused_attn:
                def on_probs(_m: nn.Module, inp: tuple, out: torch.Tensor, layer: int = layer,
                             path: str = path) -> torch.Tensor | None:
                    w = windowed(layer, out if grad else inp[0].detach(), path)
                    record(layer, select(w))
                    return w.reshape(out.shape) if grad else None

                set_unfused(stack, attn)
                stack.callback(attn.attn_drop.register_forward_hook(on_probs).remove)
                continue

            def on_sdpa(call: SdpaCall, layer: int = layer, path: str = path) -> None:
                record(layer, select(windowed(layer, call.probs(), path)))

            tap.watch(stack, layer, path, attn, on_sdpa)
        tap.activate(stack)
