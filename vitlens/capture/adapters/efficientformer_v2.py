"""timm EfficientFormerV2 (``timm.models.efficientformer_v2.EfficientFormerV2``,
``efficientformerv2_*``): a conv network with token attention in its last two stages.

Attention layers, in forward order (module paths; B batch, H heads; every grid is fixed at
build time by the module's ``resolution``, so the input must have the model's size):

- ``stages.{s}.blocks.{j}.token_mixer`` (``Attention2d``), ``[B, H, N, N]`` over the stage grid
  (``resolution``; in stage 2 the module first halves the grid with a strided conv and
  upsamples its output back). Talking-heads attention: ``talking_head1`` mixes the heads'
  logits (bias included) before the softmax and ``talking_head2`` (a 1x1 conv over heads,
  with bias) mixes the probabilities after it. Recorded: the output of
  ``...token_mixer.talking_head2`` (forward hook) -- the weights the model multiplies with v,
  signed and not row-normalised, so ``LayerSpec.softmax`` is False (like CaiT's
  talking-heads layers) and token analyses refuse these layers.
- ``stages.{s}.downsample.attn`` (``Attention2dDownsample``), ``[B, H, N2, N]``: queries on
  the halved grid ``resolution2`` (local + pooled query), keys on the stage-input grid
  ``resolution``; ``softmax(q·k·scale + bias)``, taken as the module computes it
  (``generic.SoftmaxTap``), a probability matrix with ``T_q != T_k``.

Neither class has a fused path: recording changes nothing (outputs bit-identical). With
``grad=True`` the recorded tensors are the ones multiplied with v, graph attached. There is
no flat token layout to map Grad-CAM back to (the layout is the first attention layer's
query grid); Grad-CAM refuses.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch
from torch import nn

from . import Adapter, RecordFn, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError
from .generic import SoftmaxTap, _to_pair

_EF2 = "timm.models.efficientformer_v2"
_ATTENTION = f"{_EF2}:Attention2d"
_DOWNSAMPLE = f"{_EF2}:Attention2dDownsample"


def _cls(m: nn.Module) -> str:
    return f"{type(m).__module__}:{type(m).__qualname__}"


@register_adapter
class EfficientFormerV2Adapter(Adapter):
    family = "EfficientFormerV2"
    examples = ("efficientformerv2_s0", "efficientformerv2_l")
    order = 20
    timm_modules = ("efficientformer_v2",)
    model_classes = (f"{_EF2}:EfficientFormerV2",)
    attention_classes = (_ATTENTION, _DOWNSAMPLE)
    test_models = (("efficientformerv2_s0", dict(img_size=96)),
                   ("efficientformerv2_s0", dict(img_size=(64, 96))))

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = []
        for s, stage in enumerate(model.stages):
            attn = getattr(stage.downsample, "attn", None)
            if attn is not None:
                out.append((f"stages.{s}.downsample.attn", attn))
            for j, blk in enumerate(stage.blocks):
                if getattr(blk, "token_mixer", None) is not None:
                    out.append((f"stages.{s}.blocks.{j}.token_mixer", blk.token_mixer))
        return out

    def _stride(self, module: nn.Module) -> int | None:
        """Input pixels per stage token at ``module``'s input: 4 (stem) x 2 per downsample before it."""
        stride = 4
        for stage in self.model.stages:
            if not isinstance(stage.downsample, nn.Identity):
                stride *= 2
            if getattr(stage.downsample, "attn", None) is module:
                return stride // 2
            if any(getattr(b, "token_mixer", None) is module for b in stage.blocks):
                return stride
        return None

    def _geometry(self, layer: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(query grid, key grid, query stride in pixels) from the module's build-time resolution."""
        m = self.attention_modules()[layer][1]
        stride = self._stride(m)
        if _cls(m) == _DOWNSAMPLE:
            return tuple(m.resolution2), tuple(m.resolution), (stride * 2, stride * 2)
        s = stride * (2 if m.stride_conv is not None else 1)
        return tuple(m.resolution), tuple(m.resolution), (s, s)

    def _fits(self, hw: tuple[int, int]) -> bool:
        """Every attention module was built for ``hw``: timm sizes each stage grid ceil(input / stride)
        and a stride-2 ``Attention2d`` halves it again (ceil)."""
        for _p, m in self.attention_modules():
            st = self._stride(m)
            if st is None:
                return False
            grid = (-(-hw[0] // st), -(-hw[1] // st))
            if _cls(m) == _ATTENTION and m.stride_conv is not None:
                grid = (-(-grid[0] // 2), -(-grid[1] // 2))
            if tuple(m.resolution) != grid:
                return False
        return True

    def default_input_size(self) -> tuple[int, int]:
        """The pretrained config's input size if the modules were built for it, else the stage grid x stride."""
        cfg = (getattr(self.model, "pretrained_cfg", None) or {}).get("input_size")
        if cfg and self._fits((int(cfg[-2]), int(cfg[-1]))):
            return int(cfg[-2]), int(cfg[-1])
        m = self.attention_modules()[0][1]
        st = self._stride(m) * (2 if _cls(m) == _ATTENTION and m.stride_conv is not None else 1)
        return m.resolution[0] * st, m.resolution[1] * st

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        """The first attention layer's query grid (no prefix tokens), for an input the modules were built for."""
        hw = _to_pair(image_hw)
        if not self._fits(hw):
            want = self.default_input_size()
            raise UnsupportedModelError(
                f"{type(self.model).__name__} builds its attention grids (and position biases) for a fixed input "
                f"size ({want[0]}x{want[1]}); got {hw[0]}x{hw[1]}. Resize the input, or build the model with "
                f"img_size={hw}")
        q, _k, stride = self._geometry(0)
        return TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=q, patch_size=stride, input_size=hw)

    def heads_of(self, layer: int) -> int:
        return int(self.attention_modules()[layer][1].num_heads)

    def layer_softmax(self, layer: int) -> bool:
        return _cls(self.attention_modules()[layer][1]) == _DOWNSAMPLE

    def layer_geometry(self, layer: int, layout: TokenLayout, windows: list) -> dict:
        q, k, stride = self._geometry(layer)
        return dict(num_queries=q[0] * q[1], num_keys=k[0] * k[1], query_grid=q, key_grid=k,
                    query_prefix=0, key_prefix=0, stride=stride, stage=self._stage_of(layer))

    def _stage_of(self, layer: int) -> int:
        return int(self.attention_modules()[layer][0].split(".")[1])

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        return (), ""

    def gradcam_modules(self) -> tuple[list[nn.Module], str]:
        raise UnsupportedModelError(
            f"gradcam reads the token grid entering an attention block of a flat ViT or a Swin stage; "
            f"{type(self.model).__name__} ({self.family}) attends on stage grids of a conv network that "
            f"vitlens does not map back to the input. Use method 'ig', 'input-x-gradient' or 'random'")

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]) -> None:
        if rows != "all":
            raise ValueError(f"rows={rows!r}: EfficientFormerV2 has no prefix tokens; use rows='all'")
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()

        def on_image(_m: nn.Module, args: tuple) -> None:
            set_layout(self.layout_for(tuple(int(v) for v in args[0].shape[-2:])))

        def checked(layer: int, p: torch.Tensor, path: str) -> torch.Tensor:
            q, k, _ = self._geometry(layer)
            want = (self.heads_of(layer), q[0] * q[1], k[0] * k[1])
            if p.dim() != 4 or tuple(p.shape[1:]) != want:
                raise UnsupportedModelError(
                    f"{path} applied weights of shape {tuple(p.shape)} but vitlens predicted [B, {want[0]}, "
                    f"{want[1]}, {want[2]}]; this model's forward differs from what vitlens expects")
            p = p if grad else p.detach()
            return p if head_index is None else p.index_select(1, head_index.to(p.device))

        stack.callback(self.model.register_forward_pre_hook(on_image).remove)
        softmax = SoftmaxTap()
        for layer in layers:
            path, attn = modules[layer]
            if _cls(attn) == _DOWNSAMPLE:
                def on_softmax(out: torch.Tensor, layer: int = layer, path: str = path) -> None:
                    record(layer, checked(layer, out, path))

                softmax.watch(stack, layer, path, attn, on_softmax)
                continue

            def on_weights(_m: nn.Module, _inp: tuple, out: torch.Tensor, layer: int = layer,
                           path: str = path) -> None:
                record(layer, checked(layer, out, f"{path}.talking_head2"))

            stack.callback(attn.talking_head2.register_forward_hook(on_weights).remove)
        softmax.activate(stack)
