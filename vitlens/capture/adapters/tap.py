"""Shared machinery for hierarchical and hybrid timm families (PVT-v2, Twins, MaxViT/CoAtNet, ...):
the attention is recorded while each attention module runs, whatever its tensor layout.

Mechanism, per recorded attention module (its timm path is the hook point):

- the model itself (pre-hook): input image ``[B, C, H_in, W_in]`` -> the adapter's
  per-layer geometry for that input size (:meth:`TapAdapter.geometry`);
- the attention module (pre- and forward hook) marks it as running; a
  ``TorchFunctionMode`` active for the ``with`` block watches only the torch calls made
  while a recorded module runs:

  * fused path (default, module's ``fused_attn`` True): the module's own
    ``F.scaled_dot_product_attention(q, k, v, attn_mask, ...)`` call is passed on
    unchanged (outputs bit-identical) and ``softmax(q·kᵀ·scale + mask)`` is computed
    beside it from those very q, k and mask;
  * unfused path (families without a fused kernel, modules switched off by the user, and
    ``grad=True``, which switches every recorded module to it): the output ``S`` of the
    module's softmax is followed through view-only operations (dropout, transpose,
    reshape, ...) and recorded when it, or such a view of it, is an operand of the matmul
    with v. A softmax output that is changed before that matmul (talking heads, gating),
    a second softmax, or no such matmul, is refused with the reason: vitlens records the
    tensor the model multiplies with v, or nothing. With ``grad=True`` the model goes on
    with a view of the recorded tensor, so gradients w.r.t. the recording exist.

- every record is checked against the adapter's geometry (queries, keys, windows per
  image) and rearranged to ``[B, H, Tq, Tk]`` (flat layers) or ``[B, nW, H, n, n]``
  (``"window"``/``"grid"`` layers: per window, windows numbered as the family partitions).

A family adapter sets ``model_classes``/``attention_classes`` and implements
:meth:`TapAdapter.attention_modules_of`, :meth:`TapAdapter.default_input_size` and
:meth:`TapAdapter.geometry` (one :class:`LayerGeo` per layer). None of these layers uses
Swin's shifted-window geometry over the whole model, so these caches have no
:class:`WindowLayout` and the token-level analyses (rollout, CLS maps, distances) refuse
every layer whose :class:`LayerSpec` is not square self-attention over the input's token
layout (``cache.require_token_attention``).
"""
from __future__ import annotations

import functools
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import Adapter, RecordFn
from .generic import ModuleTap, SdpaCall, set_unfused
from ..cache import TokenLayout
from ...errors import UnsupportedModelError

_SOFTMAX = {torch.Tensor.softmax, torch.softmax, F.softmax}
_MATMUL = {torch.Tensor.__matmul__, torch.matmul, torch.Tensor.matmul, torch.bmm, torch.Tensor.bmm}
# operations that leave the values of S unchanged (view or copy of the same numbers)
_VIEWS = {F.dropout, torch.dropout, torch.Tensor.transpose, torch.transpose, torch.Tensor.permute,
          torch.permute, torch.Tensor.reshape, torch.reshape, torch.Tensor.view, torch.Tensor.contiguous,
          torch.Tensor.flatten, torch.flatten, torch.Tensor.unflatten}


def pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv_out(hw: tuple[int, int], conv: nn.Module) -> tuple[int, int]:
    """Output size of a Conv2d / pooling layer for an input of ``hw``: PyTorch's floor formula."""
    k, s = pair(conv.kernel_size), pair(conv.stride)
    p = pair(getattr(conv, "padding", 0)) if not isinstance(getattr(conv, "padding", 0), str) else None
    d = pair(getattr(conv, "dilation", 1))
    if p is None:
        if conv.padding == "same":
            return hw
        p = (0, 0)
    ceil = bool(getattr(conv, "ceil_mode", False))
    out = []
    for n, kk, ss, pp, dd in zip(hw, k, s, p, d):
        num = n + 2 * pp - dd * (kk - 1) - 1
        out.append((-(-num // ss) if ceil else num // ss) + 1)
    return out[0], out[1]


@dataclass(frozen=True)
class LayerGeo:
    """Geometry of one attention layer for one input size (what :class:`LayerSpec` says).

    ``windows`` is the number of windows (or grid partitions, or local blocks) per image for
    ``"window"``/``"grid"`` layers, 1 otherwise; ``num_queries``/``num_keys`` are per window.
    """

    kind: str
    num_queries: int
    num_keys: int
    query_grid: tuple[int, int] | None
    key_grid: tuple[int, int] | None
    stride: tuple[int, int] | None
    stage: int = 0
    query_prefix: int = 0
    key_prefix: int = 0
    windows: int = 1


class _Tap(ModuleTap):
    """Sees the torch calls of the attention module that is running (see the module docstring).

    Watched modules (:meth:`ModuleTap.watch`) must run in layer order, each recording once.
    """

    def __init__(self, adapter: "TapAdapter", record: Callable[[int, torch.Tensor, bool], torch.Tensor | None],
                 grad: bool) -> None:
        super().__init__()
        self.adapter, self.record, self.grad = adapter, record, grad
        self.last = -1  # the last layer that ran in this forward (reset per forward)
        self.reset()

    def enter(self, layer: int, path: str) -> None:
        if layer <= self.last:
            raise UnsupportedModelError(f"{path} ran out of the order vitlens numbers the layers in; "
                                        f"this model's forward differs from what vitlens expects")
        self.last = layer
        self.reset()
        super().enter(layer, path)

    def leave(self, layer: int, path: str) -> None:
        done = self.done
        self.running = None
        self.reset()
        if not done:
            raise UnsupportedModelError(
                f"{path} did not multiply an unchanged softmax (or a scaled_dot_product_attention) "
                f"with v, so vitlens found no attention probabilities to record; this module's "
                f"forward differs from what vitlens expects")

    def reset(self) -> None:
        self.softmax: torch.Tensor | None = None
        self.views: list[torch.Tensor] = []
        self.done = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.running is None:
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            if self.done:
                raise UnsupportedModelError(f"{self.path} computed attention twice in one call; vitlens "
                                            f"cannot tell which to record")
            self.record(self.running, SdpaCall(args, kwargs).probs(), False)
            self.done = True
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAX:
            if self.done or self.softmax is not None:
                raise UnsupportedModelError(
                    f"{self.path} computed a second softmax in one call; vitlens records the one tensor "
                    f"the model multiplies with v and cannot tell which it is here")
            if self.grad:  # the model goes on with a view of the recorded tensor
                rec = self.adapter.arrange(self.running, out, self.path)
                out = self.adapter.unarrange(self.running, rec, out.shape)
                self.softmax, self.views = rec, [out]
            else:
                self.softmax, self.views = out, [out]
        elif self.softmax is not None and not self.done:
            if func in _VIEWS and args and any(args[0] is v for v in self.views):
                self.views.append(out)
            elif func in _MATMUL and any(a is v for a in args[:2] for v in self.views):
                self.record(self.running, self.softmax, self.grad)
                self.done = True
        return out


class TapAdapter(Adapter):
    """Base of the hierarchical / hybrid family adapters (not registered itself)."""

    order = 20

    # ------------------------------------------------------------------ description
    def default_input_size(self) -> tuple[int, int]:
        img = getattr(self.model, "img_size", None)
        if img is not None:
            return pair(img)
        return super().default_input_size()

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:  # pragma: no cover - abstract
        """One :class:`LayerGeo` per attention layer (forward order) for an input of ``image_hw``."""
        raise NotImplementedError

    def patch_size(self) -> tuple[int, int]:
        """Input pixels per token of the first attention layer's query grid."""
        raise NotImplementedError  # pragma: no cover

    def prefix_names(self) -> tuple[str, ...]:
        return ()

    @functools.lru_cache(maxsize=8)  # noqa: B019 - per adapter instance, a handful of input sizes
    def _geo(self, image_hw: tuple[int, int]) -> tuple[LayerGeo, ...]:
        geo = tuple(self.geometry(image_hw))
        if len(geo) != len(self.attention_modules()):
            raise UnsupportedModelError(f"{type(self.model).__name__}: vitlens described {len(geo)} attention "
                                        f"layers but found {len(self.attention_modules())}")
        return geo

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        """The first attention layer's query tokens: its prefix tokens and grid (a stage grid)."""
        hw = pair(image_hw)
        first = self._geo(hw)[0]
        names = self.prefix_names()
        grid = first.query_grid if first.query_grid is not None else (0, 0)
        stride = first.stride or self.patch_size()
        return TokenLayout(num_prefix_tokens=len(names), prefix_names=names, grid_size=grid,
                           patch_size=stride, input_size=hw)

    def layer_kind(self, layer: int) -> str:
        return self._geo(self.default_input_size())[layer].kind

    def layer_geometry(self, layer: int, layout: TokenLayout, windows: list) -> dict:
        g = self._geo(pair(layout.input_size))[layer]
        return dict(num_queries=g.num_queries, num_keys=g.num_keys, query_grid=g.query_grid,
                    key_grid=g.key_grid, query_prefix=g.query_prefix, key_prefix=g.key_prefix,
                    stride=g.stride, stage=g.stage)

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        return (), ""

    def gradcam_modules(self) -> tuple[list[nn.Module], str]:
        raise UnsupportedModelError(
            f"gradcam reads the token grid entering an attention block of a flat ViT or a Swin stage; "
            f"{type(self.model).__name__} ({self.family}) changes its token grid between stages in ways "
            f"vitlens does not map back to the input. Use method 'ig', 'input-x-gradient' or 'random'")

    # ------------------------------------------------------------------ recording
    #: windowed layers compute ``[B, H, nW, n_q, n_k]`` (heads before windows): recorded transposed
    windows_heads_first: bool = False

    def arrange(self, layer: int, p: torch.Tensor, path: str) -> torch.Tensor:
        """The module's ``[N, H, Tq, Tk]`` probabilities -> ``[B, H, Tq, Tk]`` or ``[B, nW, H, n, n]`` (a view)."""
        g = self._current[layer]
        B = self._batch
        if self.windows_heads_first and p.dim() == 5:
            if p.shape[0] != B or p.shape[2] != g.windows or p.shape[-2:] != (g.num_queries, g.num_keys):
                raise UnsupportedModelError(
                    f"{path} computed attention of shape {tuple(p.shape)} but vitlens predicted "
                    f"[{B}, heads, {g.windows}, {g.num_queries}, {g.num_keys}]; this model's forward "
                    f"differs from what vitlens expects")
            return p.transpose(1, 2)
        if p.dim() == 5 and p.shape[:2] == (B, g.windows) and p.shape[-2:] == (g.num_queries, g.num_keys):
            return p  # windows computed batched as [B, nW, H, n, n]
        if p.shape[-2:] != (g.num_queries, g.num_keys) or p.shape[0] != B * g.windows or p.dim() != 4:
            raise UnsupportedModelError(
                f"{path} computed attention of shape {tuple(p.shape)} but vitlens predicted "
                f"{B * g.windows} x [heads, {g.num_queries}, {g.num_keys}] for a batch of {B}; this model's "
                f"forward differs from what vitlens expects")
        if g.kind in ("window", "grid"):
            return p.reshape(B, g.windows, p.shape[1], g.num_queries, g.num_keys)
        return p

    def unarrange(self, layer: int, rec: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Inverse of :meth:`arrange` (a view of ``rec`` with the module's own shape)."""
        if self.windows_heads_first and len(shape) == 5:
            return rec.transpose(1, 2)
        return rec.reshape(shape)

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]) -> None:
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()
        self._current: tuple[LayerGeo, ...] = ()
        self._batch = 0

        def on_image(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            hw = (int(x.shape[-2]), int(x.shape[-1]))
            self._current, self._batch = self._geo(hw), int(x.shape[0])
            set_layout(self.layout_for(hw))
            tap.last = -1

        def on_record(layer: int, p: torch.Tensor, arranged: bool) -> None:
            path = modules[layer][0]
            if not arranged:
                p = self.arrange(layer, p, path)
            g = self._current[layer]
            if head_index is not None:
                p = p.index_select(p.dim() - 3, head_index.to(p.device))
            if rows == "prefix":
                if g.query_prefix == 0 and g.kind != "class":
                    raise ValueError(f"rows='prefix' records the prefix-token query rows, but layer {layer} "
                                     f"({path}) has no prefix-token queries; use rows='all'")
                if g.kind != "class":
                    p = p[..., :g.query_prefix, :]
            record(layer, p)

        tap = _Tap(self, on_record, grad)
        stack.callback(self.model.register_forward_pre_hook(on_image, with_kwargs=True).remove)
        for layer in layers:
            path, attn = modules[layer]
            if grad and hasattr(attn, "fused_attn"):
                set_unfused(stack, attn)
            tap.watch(stack, layer, path, attn)
        stack.enter_context(tap)
