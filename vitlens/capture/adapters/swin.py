"""timm Swin Transformer (``swin_*``) and SwinV2 (``swinv2_*``): shifted-window attention
in hierarchical stages.

Layers are numbered in forward order across stages: layer ``l`` is
``layers.{s}.blocks.{j}`` (Swin-T: stages of 2, 2, 6, 2 blocks -> layers 0..11).

Hook points, per recorded layer (B batch, heads h, stage grid H x W, window n = wh*ww
tokens, nW windows per image; see ``docs/swin.md``):

- ``patch_embed`` (forward hook): image ``[B, C, H_in, W_in]`` -> patch grid
  ``[B, gh0, gw0, C]`` (NHWC); gives the :class:`TokenLayout` (first stage's grid, no
  prefix tokens) and every layer's :class:`WindowLayout` (stage grids by timm's
  patch merging, window and shift read from each block).
- ``layers.{s}.blocks.{j}`` (pre-hook): block input ``[B, H, W, C]`` (NHWC); checked
  against the predicted stage grid.
- ``layers.{s}.blocks.{j}.attn`` (pre-hook): the shift mask ``[nW, n, n]`` (0 / -100)
  timm passes, or None.
- ``layers.{s}.blocks.{j}.attn.attn_drop`` (forward hook): the softmax probabilities
  ``[B*nW, h, n, n]`` -- relative position bias (V1 table, V2 continuous MLP bias with
  cosine attention and logit scale) and shift mask included -- recorded as
  ``[B, nW, h, n, n]``.

Mechanism: timm's Swin V1 ``WindowAttention`` has a ``fused_attn`` flag (off by default in
timm, ``use_fused_attn(experimental=True)``); for the recorded blocks it is set to False
for the duration of the ``with`` block and restored on exit, so ``attn_drop`` always sees
the probabilities. SwinV2 has no fused path. With timm's default flags nothing changes and
the outputs are bit-identical; a block the user switched to the fused kernel runs unfused
inside the block (outputs equal up to float rounding).

timm's shift mask adds -100, not -inf, so masked (cross-region) pairs hold values near
1e-44 in the model; vitlens records them as exact zeros. With ``grad=True`` the recorded
tensor is the very one multiplied with v (graph attached), so those entries keep timm's
tiny values there, and the hook hands the model a view of the recorded
``[B, nW, h, n, n]`` tensor (same values) so that gradients w.r.t. it exist.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn

from . import Adapter, RecordFn, register_adapter
from .generic import set_unfused
from ..cache import TokenLayout, WindowLayout
from ...errors import UnsupportedModelError


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


class _SwinBase(Adapter):
    """Shared by Swin, SwinV2 and SwinV2-CR: same stage/block structure, different attention maths."""

    order = 10
    #: the model attribute holding the stages (``model.layers``; SwinV2-CR: ``model.stages``)
    stages_attr = "layers"
    #: ``patch_embed`` returns NHWC ``[B, H, W, C]`` (Swin, SwinV2) or NCHW (SwinV2-CR)
    patch_embed_nhwc = True

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"{cls.stages_attr}.{s}.blocks.{j}.attn", b.attn)
                for s, st in enumerate(getattr(model, cls.stages_attr)) for j, b in enumerate(st.blocks)]

    def _stages(self) -> nn.Module:
        return getattr(self.model, self.stages_attr)

    def _blocks(self) -> list[tuple[int, str, nn.Module]]:
        return [(s, f"{self.stages_attr}.{s}.blocks.{j}", b)
                for s, st in enumerate(self._stages()) for j, b in enumerate(st.blocks)]

    def heads_of(self, layer: int) -> int:
        return int(self._blocks()[layer][2].attn.num_heads)

    def layer_kind(self, layer: int) -> str:
        return "window"

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        return self.layouts_for(image_hw, self._grid(image_hw))[0]

    def window_layouts(self, image_hw: tuple[int, int]) -> list[WindowLayout]:
        return self.layouts_for(image_hw, self._grid(image_hw))[1]

    def _grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """First-stage patch grid for an input size (timm's PatchEmbed: floor division, strict size)."""
        (ph, pw) = _pair(self.model.patch_embed.patch_size)
        return image_hw[0] // ph, image_hw[1] // pw

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """Stage outputs ``layers.{s}`` (``[B, H_s, W_s, C]``, NHWC): Grad-CAM's ``layer`` is a stage."""
        return tuple(f"layers.{s}" for s in range(len(self._stages()))), "nhwc"

    def layouts_for(self, image_hw: tuple[int, int], grid: tuple[int, int]
                    ) -> tuple[TokenLayout, list[WindowLayout]]:
        """Token layout (first stage) and one window layout per layer for a patch grid."""
        patch = _pair(self.model.patch_embed.patch_size)
        token = TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=grid,
                            patch_size=patch, input_size=tuple(image_hw))
        windows: list[WindowLayout] = []
        (h, w), (ph, pw) = grid, patch
        layer = 0
        for s, stage in enumerate(self._stages()):
            if not isinstance(stage.downsample, nn.Identity):  # timm pads odd grids, then merges 2x2
                h, w, ph, pw = (h + 1) // 2, (w + 1) // 2, ph * 2, pw * 2
            for blk in stage.blocks:
                win, shift = _pair(blk.window_size), _pair(blk.shift_size)
                n_win = -(-h // win[0]) * -(-w // win[1])
                windows.append(WindowLayout(layer=layer, stage=s, grid_size=(h, w), window_size=win,
                                            shift_size=shift, num_windows=n_win, patch_size=(ph, pw)))
                layer += 1
        return token, windows

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout | WindowLayout], None]) -> None:
        current: dict[int, WindowLayout] = {}

        def on_patches(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if out.ndim != 4:
                raise UnsupportedModelError(
                    f"patch_embed returned shape {tuple(out.shape)}; vitlens expects timm Swin's "
                    f"{'NHWC' if self.patch_embed_nhwc else 'NCHW'} patch grid")
            gh, gw = (out.shape[1], out.shape[2]) if self.patch_embed_nhwc else (out.shape[2], out.shape[3])
            token, windows = self.layouts_for(tuple(args[0].shape[-2:]), (int(gh), int(gw)))
            set_layout(token)
            for wl in windows:
                current[wl.layer] = wl
                set_layout(wl)

        stack.callback(self.model.patch_embed.register_forward_hook(on_patches).remove)
        head_index = None if heads is None else torch.tensor(heads)
        blocks = self._blocks()

        for layer in layers:
            _, path, blk = blocks[layer]
            attn = blk.attn
            state: dict[str, Any] = {}

            def on_block(_m: nn.Module, args: tuple, layer: int = layer, path: str = path) -> None:
                x = args[0]
                wl = current.get(layer)
                if wl is None or x.ndim != 4 or tuple(x.shape[1:3]) != wl.grid_size:
                    raise UnsupportedModelError(
                        f"{path} got input {tuple(x.shape)} but vitlens predicted the NHWC stage grid "
                        f"{wl.grid_size if wl else '(none: patch_embed did not run)'}; "
                        f"this model's forward differs from timm's Swin")

            def on_call(_m: nn.Module, args: tuple, kwargs: dict, state: dict = state) -> None:
                state["mask"] = kwargs.get("mask", args[1] if len(args) > 1 else None)

            def on_probs(_m: nn.Module, inp: tuple, out: torch.Tensor, layer: int = layer,
                         path: str = path, state: dict = state) -> torch.Tensor | None:
                wl = current[layer]
                p = out if grad else inp[0]
                bw, _, n, n2 = p.shape
                nw = wl.num_windows
                if n != wl.window_area or n2 != n or bw % nw:
                    raise UnsupportedModelError(
                        f"{path}.attn_drop saw {tuple(p.shape)} but the window layout predicts "
                        f"[B*{nw}, heads, {wl.window_area}, {wl.window_area}]")
                windowed = p.reshape(bw // nw, nw, -1, n, n)
                p = windowed
                if not grad:
                    p = p.detach()
                    mask = state.get("mask")
                    if mask is not None:  # timm's -100 stands for -inf: make the masked pairs exact 0
                        p = p.masked_fill((mask != 0).reshape(1, nw, 1, n, n), 0.0)
                if head_index is not None:
                    p = p.index_select(2, head_index.to(p.device))
                record(layer, p)
                if grad:  # the model goes on with a view of the recorded tensor: gradients reach it
                    return windowed.reshape(out.shape)
                return None

            if hasattr(attn, "fused_attn"):  # Swin V1; SwinV2 always computes the probabilities
                set_unfused(stack, attn)
            stack.callback(blk.register_forward_pre_hook(on_block).remove)
            stack.callback(attn.register_forward_pre_hook(on_call, with_kwargs=True).remove)
            stack.callback(attn.attn_drop.register_forward_hook(on_probs).remove)


@register_adapter
class SwinAdapter(_SwinBase):
    family = "Swin"
    timm_modules = ("swin_transformer",)
    examples = ("swin_tiny_patch4_window7_224", "swin_base_patch4_window12_384")
    model_classes = ("timm.models.swin_transformer:SwinTransformer",)
    attention_classes = ("timm.models.swin_transformer:WindowAttention",)
    test_models = (("swin_tiny_patch4_window7_224", dict(img_size=112, depths=(2, 2), num_heads=(2, 4),
                                                          embed_dim=32)),
                   ("swin_tiny_patch4_window7_224", dict(img_size=(96, 128), window_size=4, depths=(2, 2, 2),
                                                          num_heads=(2, 2, 4), embed_dim=16)))


@register_adapter
class SwinV2Adapter(_SwinBase):
    family = "SwinV2"
    timm_modules = ("swin_transformer_v2",)
    examples = ("swinv2_tiny_window8_256", "swinv2_base_window12to24_192to384")
    model_classes = ("timm.models.swin_transformer_v2:SwinTransformerV2",)
    attention_classes = ("timm.models.swin_transformer_v2:WindowAttention",)
    test_models = (("swinv2_tiny_window8_256", dict(img_size=128, depths=(2, 2), num_heads=(2, 4),
                                                     embed_dim=32)),)


@register_adapter
class SwinV2CrAdapter(_SwinBase):
    """SwinV2-CR (``timm.models.swin_transformer_v2_cr``, ``swinv2_cr_*``): timm's second SwinV2
    implementation (after Christoph Reich's).

    Same windowing as :class:`SwinV2Adapter` -- per block the NHWC stage grid is rolled by
    ``-shift_size``, padded bottom/right to window multiples, cut into row-major windows,
    and a shifted block adds a 0 / -100 region mask -- so one :class:`WindowLayout` per
    layer describes it. Differences handled here: the stages are ``model.stages`` (NCHW
    between stages, NHWC inside), ``patch_embed`` returns NCHW ``[B, C, gh, gw]``, and the
    attention is ``WindowMultiHeadAttention``: scaled cosine attention
    ``cos(q, k) * exp(clamp(logit_scale))`` plus a continuous position bias from an MLP
    over log-spaced relative coordinates, then the mask, softmax and ``attn_drop``
    (no fused path): ``stages.{s}.blocks.{j}.attn.attn_drop`` receives
    ``[B*nW, h, n, n]``, recorded as ``[B, nW, h, n, n]``. Grad-CAM reads each stage's
    last block output ``stages.{s}.blocks.{last}`` (NHWC; the stage itself returns NCHW).
    """

    family = "SwinV2-CR"
    timm_modules = ("swin_transformer_v2_cr",)
    examples = ("swinv2_cr_tiny_ns_224", "swinv2_cr_small_224")
    model_classes = ("timm.models.swin_transformer_v2_cr:SwinTransformerV2Cr",)
    attention_classes = ("timm.models.swin_transformer_v2_cr:WindowMultiHeadAttention",)
    stages_attr = "stages"
    patch_embed_nhwc = False
    test_models = (("swinv2_cr_tiny_224", dict(img_size=128, depths=(2, 2), num_heads=(2, 4), embed_dim=32,
                                               window_size=8)),
                   # odd stage grid (padding before windows, padded patch merging), extra norms
                   ("swinv2_cr_tiny_ns_224", dict(img_size=(80, 112), depths=(2, 2, 2), num_heads=(2, 2, 4),
                                                  embed_dim=16, window_size=4)))

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """Each stage's last block output ``stages.{s}.blocks.{last}`` (``[B, H_s, W_s, C]``, NHWC)."""
        return tuple(f"stages.{s}.blocks.{len(st.blocks) - 1}" for s, st in enumerate(self._stages())), "nhwc"
