"""Hugging Face transformers Swin and SwinV2: shifted-window attention in hierarchical stages.

Layers are numbered in forward order across stages: layer ``l`` is
``{bb}.encoder.layers.{s}.blocks.{j}`` (``{bb}`` = ``swin`` / ``swinv2`` inside the
classification model, nothing for ``SwinModel`` itself).

Hook points, per recorded layer (B batch, h heads, stage grid H x W, window n = ws*ws
tokens, nW windows per image):

- ``{bb}.embeddings.patch_embeddings`` (forward hook): returns ``(tokens, (gh, gw))``; the
  image is zero-padded to a multiple of the patch, so ``gh = ceil(H_in / patch)``. Gives
  the :class:`TokenLayout` (no prefix tokens) and every layer's :class:`WindowLayout`.
  Stage grids: transformers merges patches at the *end* of a stage, ``(H + 1) // 2``.
- Swin ``...blocks.{j}.attention`` (``SwinAttention``): pre-hook -> the shift mask
  ``[nW, n, n]`` (0 / -100) or None; its ``F.scaled_dot_product_attention`` call (sdpa)
  with ``attn_mask`` = relative position bias + shift mask, or its softmax (eager)
  -> ``[B*nW, h, n, n]``, recorded as ``[B, nW, h, n, n]``.
- SwinV2 ``...blocks.{j}.attention.self`` (``Swinv2SelfAttention``): always computes its
  probabilities (cosine attention, logit scale, continuous position bias, shift mask);
  its softmax output ``[B*nW, h, n, n]`` is recorded as ``[B, nW, h, n, n]``.
- Grad-CAM: ``...layers.{s}.blocks.{last}`` (``"nlc"``: the first output is the stage's
  tokens ``[B, H_s * W_s, C]``, row-major, before patch merging).

Geometry differences from timm, read from transformers' code: the block pads the stage
grid to a multiple of the window *first* and then rolls the padded grid
(``WindowLayout.pad_then_shift``); Swin (not V2) shrinks the window to the grid and drops
the shift at forward time when ``min(H, W) <= window`` (and keeps that change on the
module, so the layout reads the module's current window and shift); SwinV2 fixes window
and shift at construction. The shift mask adds -100 (SwinV2 adds it twice): masked pairs
are recorded as exact zeros on the default path.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

from torch import nn

from . import RecordFn, register_adapter
from .hf_common import HFAdapter, hf_builder, pair
from ..cache import TokenLayout, WindowLayout
from ...errors import UnsupportedModelError

_T = "transformers.models."


class _HFSwinBase(HFAdapter):
    order = 20
    #: Path of the attention module inside a block.
    attention_name = "attention"
    #: The block clamps window and shift to the grid at forward time (Swin v1).
    clamps_at_forward = True
    image_processor = "ViTImageProcessor"

    @classmethod
    def _blocks_of(cls, model: nn.Module) -> list[tuple[int, str, nn.Module]]:
        path, bb = cls.backbone_of(model)
        base = f"{path}.encoder.layers" if path else "encoder.layers"
        return [(s, f"{base}.{s}.blocks.{j}", b)
                for s, st in enumerate(bb.encoder.layers) for j, b in enumerate(st.blocks)]

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"{p}.{cls.attention_name}", b.get_submodule(cls.attention_name)) for _s, p, b in cls._blocks_of(model)]

    def heads_of(self, layer: int) -> int:
        return int(self.attention_modules()[layer][1].num_attention_heads)

    def layer_kind(self, layer: int) -> str:
        return "window"

    def _grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        ph, pw = pair(self.backbone()[1].config.patch_size)
        return -(-int(image_hw[0]) // ph), -(-int(image_hw[1]) // pw)

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        return self.layouts_for(image_hw, self._grid(image_hw))[0]

    def window_layouts(self, image_hw: tuple[int, int]) -> list[WindowLayout]:
        return self.layouts_for(image_hw, self._grid(image_hw))[1]

    def layouts_for(self, image_hw: tuple[int, int], grid: tuple[int, int]
                    ) -> tuple[TokenLayout, list[WindowLayout]]:
        _, bb = self.backbone()
        patch = pair(bb.config.patch_size)
        token = TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=grid, patch_size=patch,
                            input_size=(int(image_hw[0]), int(image_hw[1])))
        (h, w), (ph, pw) = grid, patch
        windows: list[WindowLayout] = []
        layer = 0
        for s, stage in enumerate(bb.encoder.layers):
            for blk in stage.blocks:
                win, shift = int(blk.window_size), int(blk.shift_size)
                if self.clamps_at_forward and min(h, w) <= win:  # SwinLayer.set_shift_and_window_size
                    win, shift = min(h, w), 0
                n_win = -(-h // win) * -(-w // win)
                windows.append(WindowLayout(layer=layer, stage=s, grid_size=(h, w), window_size=(win, win),
                                            shift_size=(shift, shift), num_windows=n_win, patch_size=(ph, pw),
                                            pad_then_shift=True))
                layer += 1
            if stage.downsample is not None:  # merged at the end of the stage, odd grids padded
                h, w, ph, pw = (h + 1) // 2, (w + 1) // 2, ph * 2, pw * 2
        return token, windows

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """The last block of each stage: its first output is the stage's tokens ``[B, H_s*W_s, C]``."""
        last: dict[int, str] = {}
        for s, p, _b in self._blocks_of(self.model):
            last[s] = p
        return tuple(last[s] for s in sorted(last)), "nlc"

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout | WindowLayout], None]) -> None:
        if rows == "prefix":  # capture() refuses it first (no prefix tokens); kept for direct callers
            raise ValueError("rows='prefix' needs prefix tokens; Swin has none, use rows='all'")
        current: dict[int, WindowLayout] = {}
        _, bb = self.backbone()

        def on_patches(_m: nn.Module, args: tuple, out: tuple) -> None:
            dims = out[1] if isinstance(out, tuple) and len(out) == 2 else None
            if dims is None:
                raise UnsupportedModelError(
                    f"patch embeddings returned {type(out).__name__}; vitlens expects transformers' "
                    f"(tokens, (height, width))")
            token, windows = self.layouts_for(tuple(args[0].shape[-2:]), (int(dims[0]), int(dims[1])))
            current.clear()
            set_layout(token)
            for wl in windows:
                current[wl.layer] = wl
                set_layout(wl)

        stack.callback(bb.embeddings.patch_embeddings.register_forward_hook(on_patches).remove)
        self._install_tap(stack, layers, record, heads=heads, rows=rows, grad=grad,
                          n_prefix=lambda *_: 0, windows=lambda layer: current[layer])


@register_adapter
class HFSwinAdapter(_HFSwinBase):
    family = "HF-Swin"
    examples = ("hf:microsoft/swin-tiny-patch4-window7-224",)
    _M = _T + "swin.modeling_swin:"
    model_classes = (_M + "SwinModel", _M + "SwinForImageClassification")
    backbone_classes = (_M + "SwinModel",)
    attention_classes = (_M + "SwinAttention",)
    test_models = (# the last stage's 4 x 4 grid equals the window: transformers drops its shift
                   hf_builder("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, window_size=4,
                              embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_labels=5),
                   # padding: a 9 x 13 grid in windows of 4 (pad to 12 x 16, then roll), then 5 x 7
                   hf_builder("SwinConfig", "SwinModel", image_size=(36, 52), patch_size=4, window_size=4,
                              embed_dim=16, depths=(2, 2), num_heads=(2, 4)))


@register_adapter
class HFSwinV2Adapter(_HFSwinBase):
    family = "HF-SwinV2"
    examples = ("hf:microsoft/swinv2-tiny-patch4-window8-256",)
    _M = _T + "swinv2.modeling_swinv2:"
    model_classes = (_M + "Swinv2Model", _M + "Swinv2ForImageClassification")
    backbone_classes = (_M + "Swinv2Model",)
    attention_classes = (_M + "Swinv2SelfAttention",)
    attention_name = "attention.self"
    clamps_at_forward = False
    test_models = (hf_builder("Swinv2Config", "Swinv2ForImageClassification", image_size=64, patch_size=4,
                              window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_labels=5),
                   hf_builder("Swinv2Config", "Swinv2Model", image_size=(36, 52), patch_size=4,
                              window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4)))
