"""Shared machinery for flat timm ViT-like models (``patch_embed`` + ``blocks[i].attn``) whose
attention modules have timm's unfused path (``fused_attn`` flag + ``attn_drop``).

Hook points, per recorded layer ``i`` (B batch, H heads, T tokens):

- ``patch_embed`` (pre-hook): input image ``[B, C, H_in, W_in]`` -> token layout.
- default path (SDPA tap): ``blocks.{i}.attn`` (pre- and forward hook) marks the module
  as running; a ``TorchFunctionMode``, active for the ``with`` block, sees the module's
  own call of ``F.scaled_dot_product_attention(q, k, v, attn_mask, ...)`` -- q and k after
  every transformation the module applies (q/k norm, RoPE), the mask with the relative
  position bias added -- passes it on unchanged (the model keeps its fused kernel, outputs
  bit-identical) and computes ``softmax(q·kᵀ·scale + mask)`` beside it ``[B, H, T, T]``.
  A module the user already switched to the unfused path is read at ``attn_drop`` instead.
- gradient path (``grad=True``): ``blocks.{i}.attn.fused_attn`` is set to False for the
  ``with`` block (restored on exit) so timm materialises the probabilities, and
  ``blocks.{i}.attn.attn_drop`` (forward hook) -> ``[B, H, T, T]``: the very tensor the
  model multiplies with v (relative position bias, RoPE, masks all included), attached
  to the autograd graph, which gradient methods need.

Families built on this: BEiT/BEiTv2 (``beit.py``), EVA/EVA02 (``eva.py``) and the
VisionTransformer gradient path (``vit.py``). :class:`BlocksAdapter` is not registered
itself: every family claims its exact model and attention classes (fail closed).
"""
from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import Adapter, RecordFn
from ..cache import TokenLayout
from ...errors import UnsupportedModelError


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float,
                    attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                    rows: slice = slice(None), workspace: "Workspace | None" = None) -> torch.Tensor:
    """``softmax(q[rows]·kᵀ·scale + mask)`` in float32, as timm's unfused path computes it.

    Args:
        q, k: ``[B, H, T, d]`` after q/k normalisation (and RoPE).
        scale: the module's ``scale`` (``d ** -0.5``).
        attn_mask: additive float mask or boolean keep-mask broadcastable to ``[B, H, T, T]``.
        is_causal: apply a causal mask.
        rows: which query rows to compute (``slice(0, P)`` for the prefix rows only).
        workspace: write the result (and the scaled q, and k's contiguous copy) into these
            reused buffers instead of fresh tensors (the caller must be done with the previous
            result).
    """
    # q and k are strided views of timm's qkv output; one contiguous copy of each (small:
    # T x d per head) lets the T x T product run ~25% faster than on the views.
    n_q, n_k = q.shape[-2], k.shape[-2]
    q = q[:, :, rows]
    if workspace is None:
        qf = (q.float() * scale).contiguous()
        scores = qf @ k.float().contiguous().transpose(-2, -1)
    else:
        qf = torch.mul(q, scale, out=workspace.take("q", q.shape))
        kc = workspace.take("k", k.shape).copy_(k)
        scores = torch.matmul(qf, kc.transpose(-2, -1), out=workspace.take("scores", (*q.shape[:-1], n_k)))
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


class Workspace:
    """Float32 buffers reused from one chunk and layer to the next (``capture(chunk=...)``): the
    chunk's scaled q, contiguous copies of k and v, and its probabilities.

    A fresh multi-megabyte tensor per chunk costs its page faults every time (the C library
    hands large blocks back to the system when they are freed): recording ViT-S whole through
    timm's unfused path spent 0.63 s of system time per batch of 32 against 0.22 s for the plain
    forward, about half its extra CPU time. One buffer per name grows to the largest request of
    the capture and serves every later one as a view.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """A float32 tensor of ``shape`` (contents undefined) backed by the buffer ``name``."""
        n = 1
        for s in shape:
            n *= int(s)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n:
            self._buffers[name] = buf = torch.empty(n, dtype=torch.float32, device=self.device)
        return buf[:n].view(shape)


def _sdpa_args(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a ``scaled_dot_product_attention`` call by name (scale filled in)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    if bound.get("enable_gqa"):
        raise UnsupportedModelError("grouped-query attention (enable_gqa) is not recorded by vitlens")
    scale = bound.get("scale")
    bound["scale"] = float(scale) if scale is not None else bound["query"].shape[-1] ** -0.5
    return bound


#: float32 bytes of one chunk's probabilities ``[chunk, H, Tq, Tk]`` when ``chunk="auto"``. On the
#: CPU about half a last-level cache (ViT-S: 4 images, ViT-B: 2): the arithmetic costs the same as
#: computing the batch whole (one ViT-S layer at batch 32 with the default reductions, one thread,
#: profiled: 138 ms in chunks of 4, 137 ms whole), while the reused buffers stay small (ViT-S at
#: batch 32: 7 MB of q, k, v and probabilities against 59 MB whole, which live through the whole
#: forward). On an accelerator large enough to keep the batch whole in most models while still
#: bounding a big model's transient (ViT-L/14@336: 21 MB per image and layer, chunks of 12).
AUTO_CHUNK_BYTES = {"cpu": 4 << 20}
_AUTO_CHUNK_BYTES_ACCELERATOR = 1 << 28


def chunk_images(chunk: int | str, batch: int, per_image: int, device: torch.device) -> int:
    """Images per chunk for ``capture(chunk=...)``: an int as given, ``"auto"`` from the bytes of one
    image's float32 probabilities ``per_image`` (:data:`AUTO_CHUNK_BYTES`)."""
    if chunk == "auto":
        budget = AUTO_CHUNK_BYTES.get(device.type, _AUTO_CHUNK_BYTES_ACCELERATOR)
        return max(1, min(batch, budget // max(1, per_image)))
    return max(1, min(batch, int(chunk)))


class ModuleTap(TorchFunctionMode):
    """Watches the torch calls a registered attention module makes while it runs.

    The one place where a capture marks which module is in its forward:
    :meth:`watch` registers a module (pre- and forward hook, both removed by the
    ``ExitStack``) under its layer index; ``running`` is the layer whose module is in its
    forward (None otherwise), ``seen`` how many watched calls it has made so far. The mode
    is active for a whole ``with vitlens.capture(...)`` block (:meth:`activate`); calls
    made while no watched module runs pass straight through.

    By default a module must make exactly one watched call per forward: none means there
    was nothing to record, two mean vitlens cannot tell which one the model uses.
    """

    #: what is watched, for messages
    what = "the watched function"
    #: appended to the message when a module made no watched call (what to do about it)
    missing_hint = ""

    def __init__(self) -> None:
        super().__init__()
        self.running: int | None = None
        self.path = ""
        self.seen = 0
        self.handlers: dict[int, Callable[..., Any]] = {}

    def watch(self, stack: ExitStack, layer: int, path: str, module: nn.Module,
              handler: Callable[..., Any] | None = None) -> None:
        """Mark ``module`` (layer ``layer`` at ``path``) as running during its forward; the
        subclass hands its watched calls to ``handler``. Undone by ``stack``."""
        if handler is not None:
            self.handlers[layer] = handler

        def enter(_m: nn.Module, _args: tuple) -> None:
            self.enter(layer, path)

        def leave(_m: nn.Module, _args: tuple, _out: Any) -> None:
            self.leave(layer, path)

        stack.callback(module.register_forward_pre_hook(enter).remove)
        stack.callback(module.register_forward_hook(leave).remove)

    def activate(self, stack: ExitStack) -> None:
        """Enter the mode for the capture block if any module is watched (exited by ``stack``)."""
        if self.handlers:
            stack.enter_context(self)

    def enter(self, layer: int, path: str) -> None:
        self.running, self.path, self.seen = layer, path, 0

    def leave(self, layer: int, path: str) -> None:
        seen, self.running = self.seen, None
        if seen != 1:
            raise UnsupportedModelError(
                f"{path} called {self.what} {seen} times (vitlens expects exactly one); this module's "
                f"forward differs from what vitlens expects{self.missing_hint if not seen else ''}")


class SdpaCall:
    """One ``F.scaled_dot_product_attention`` call as the module made it: q, k after every
    transformation the module applies (q/k norm, RoPE, GQA expansion), the mask with any
    position bias added, the scale it uses; v and the dropout probability."""

    __slots__ = ("q", "k", "v", "mask", "causal", "scale", "dropout")

    def __init__(self, args: tuple, kwargs: dict) -> None:
        a = _sdpa_args(args, kwargs)
        self.q, self.k, self.v, self.mask = a["query"], a["key"], a.get("value"), a.get("attn_mask")
        self.causal, self.scale = bool(a.get("is_causal", False)), a["scale"]
        self.dropout = float(a.get("dropout_p", 0.0) or 0.0)

    @property
    def num_keys(self) -> int:
        return int(self.k.shape[-2])

    def probs(self, heads: torch.Tensor | None = None, rows: slice = slice(None)) -> torch.Tensor:
        """``softmax(q·kᵀ·scale + mask)`` ``[B, H, Tq, Tk]`` without graph, in q's dtype (see
        :func:`attention_probs`); ``heads``: index of the heads to keep (q, k and a per-head mask)."""
        q, k, mask = self.q, self.k, self.mask
        with torch.no_grad():
            if heads is not None:
                idx = heads.to(q.device)
                q, k = q.index_select(1, idx), k.index_select(1, idx)
                if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[1] > 1:
                    mask = mask.index_select(1, idx)
            p = attention_probs(q, k, self.scale, mask, self.causal, rows)
        return p.to(q.dtype) if q.dtype != p.dtype else p

    def computable(self) -> bool:
        """Whether vitlens may compute this call's output itself (:meth:`attend`): no dropout, no
        gradient wanted, and the ``[B, H, T, d]`` layout every timm attention passes."""
        tensors = (self.q, self.k, self.v)
        return (self.dropout == 0.0 and isinstance(self.v, torch.Tensor)
                and all(t.dim() == 4 for t in tensors) and self.q.shape[:2] == self.k.shape[:2] == self.v.shape[:2]
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))

    def attend(self, chunk: int | str, each: Callable[[slice, torch.Tensor], None],
               workspace: Workspace | None = None) -> torch.Tensor:
        """The call's output ``softmax(q·kᵀ·scale + mask)·v`` computed here, ``chunk`` images at a time.

        Each chunk's probabilities (float32 from :func:`attention_probs`, cast to q's dtype as
        :meth:`probs` gives them) go to ``each(images, probs)`` while they are in the cache, and
        are multiplied with v in v's dtype: the same operations as timm's unfused path, so the
        output equals it, and the fused kernel's to float rounding (~1e-6). The layer's whole
        ``[B, H, Tq, Tk]`` never exists. Only for calls that are :meth:`computable`. With a
        ``workspace`` (float32 q only) each chunk's probabilities are a view of a buffer the next
        chunk overwrites: ``each`` must copy what it keeps.
        """
        q, k, v, mask = self.q, self.k, self.v, self.mask
        B = q.shape[0]
        n = chunk_images(chunk, B, q.shape[1] * q.shape[2] * k.shape[2] * 4, q.device)
        per_image_mask = isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[0] == B > 1
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=v.device)
        ws = workspace if q.dtype == torch.float32 else None
        with torch.no_grad():
            for start in range(0, B, n):
                images = slice(start, min(B, start + n))
                p = attention_probs(q[images], k[images], self.scale, mask[images] if per_image_mask else mask,
                                    self.causal, workspace=ws)
                p = p.to(q.dtype)           # one cast for both uses: SDPA's q, k and v share a dtype
                # v is a strided view of the module's qkv: matmul would copy it into a fresh tensor
                # (and on it the product runs slower); a reused contiguous copy costs ~4 ms less
                # per ViT-S layer at batch 32
                vi = v[images]
                if ws is not None:
                    vi = ws.take("v", vi.shape).copy_(vi)
                torch.matmul(p, vi, out=out[images])
                each(images, p)
        return out


class SdpaTap(ModuleTap):
    """Sees the ``F.scaled_dot_product_attention`` call a watched module makes and hands it,
    as an :class:`SdpaCall`, to the module's handler. The call then runs unchanged (the model
    keeps its fused kernel: outputs bit-identical), unless the handler returns the output
    itself (:meth:`SdpaCall.attend`, ``capture(chunk=...)``)."""

    what = "scaled_dot_product_attention"

    def __init__(self) -> None:
        super().__init__()
        #: the capture's reused buffers for :meth:`SdpaCall.attend`, one per device
        self.workspaces: dict[torch.device, Workspace] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.running is not None:
            self.seen += 1
            if self.seen == 1:
                out = self.handlers[self.running](SdpaCall(args, kwargs))
                if out is not None:
                    return out
        return func(*args, **kwargs)


def sdpa_recorder(record: RecordFn, layer: int, expect: Callable[[int], int], heads: torch.Tensor | None,
                  rows: str, chunk: int | str | None,
                  workspaces: dict[torch.device, Workspace]) -> Callable[[SdpaCall], torch.Tensor | None]:
    """The :class:`SdpaTap` handler that records one layer: ``expect(num_keys)`` checks the keys
    against the layout and gives the prefix query rows. Computed beside the fused kernel, or, with
    ``chunk`` (reduce on record, every query row), the output itself in image chunks
    (:meth:`SdpaCall.attend`), each chunk recorded as ``record(layer, probs, images)`` from the
    capture's reused buffers (``workspaces``: the tap's :attr:`SdpaTap.workspaces`)."""
    def select(p: torch.Tensor) -> torch.Tensor:
        return p if heads is None else p.index_select(1, heads.to(p.device))

    def on_sdpa(call: SdpaCall) -> torch.Tensor | None:
        P = expect(call.num_keys)
        if chunk is not None and rows == "all" and call.computable():
            ws = workspaces.setdefault(call.q.device, Workspace(call.q.device))
            return call.attend(chunk, lambda images, p: record(layer, select(p), images), ws)
        record(layer, call.probs(heads, slice(0, P) if rows == "prefix" else slice(None)))
        return None

    return on_sdpa


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
    # the effective stride: a hybrid (CNN backbone) embedding's projection patch (often 1)
    # times the backbone's reduction; timm's PatchEmbed reports its patch size here too
    stride = pe.feat_ratio(as_scalar=False) if hasattr(pe, "feat_ratio") else pe.patch_size
    return TokenLayout(num_prefix_tokens=len(names), prefix_names=names, grid_size=grid,
                       patch_size=_to_pair(stride), input_size=tuple(image_hw))


class BlocksAdapter(Adapter):
    """Flat timm ViT-like models: ``patch_embed`` + ``blocks[i].attn`` with the unfused path."""

    chunks = True

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(model.blocks)]

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[0].attn.num_heads)

    def heads_of(self, layer: int) -> int:
        return self.num_heads

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        """Token layout for an input of ``image_hw`` pixels."""
        return token_layout(self.model, image_hw)

    @property
    def num_prefix_tokens(self) -> int:
        return len(prefix_names_of(self.model))

    def block_points(self) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}", b) for i, b in enumerate(self.model.blocks)]

    # ------------------------------------------------------------------ helpers
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

    def _install_unfused(self, stack: ExitStack, layers: list[int], record: RecordFn,
                         heads: list[int] | None, rows: str, current: dict[str, TokenLayout]) -> None:
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()
        for layer in layers:
            path, attn = modules[layer]

            def on_probs(_m: nn.Module, _inp: tuple, out: torch.Tensor, layer: int = layer,
                         path: str = path) -> None:
                n_prefix = self._n_prefix(current, out.shape[-1], path)
                p = out if head_index is None else out.index_select(1, head_index.to(out.device))
                record(layer, p[:, :, :n_prefix] if rows == "prefix" else p)

            set_unfused(stack, attn)
            stack.callback(attn.attn_drop.register_forward_hook(on_probs).remove)

    def _install_sdpa(self, stack: ExitStack, layers: list[int], record: RecordFn,
                      heads: list[int] | None, rows: str, current: dict[str, TokenLayout],
                      chunk: int | str | None = None) -> list[int]:
        """Tap the fused layers' SDPA calls; return the layers that run unfused (read at attn_drop)."""
        head_index = None if heads is None else torch.tensor(heads)
        modules = self.attention_modules()
        tap = SdpaTap()
        unfused = []
        for layer in layers:
            path, attn = modules[layer]
            if not getattr(attn, "fused_attn", False):
                unfused.append(layer)
                continue
            expect = functools.partial(self._n_prefix, current, path=path)
            tap.watch(stack, layer, path, attn, sdpa_recorder(record, layer, expect, head_index, rows, chunk,
                                                              tap.workspaces))
        tap.activate(stack)
        return unfused

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None],
                chunk: int | str | None = None) -> None:
        current: dict[str, TokenLayout] = {}
        self._install_layout_hook(stack, set_layout, current)
        if not grad:
            layers = self._install_sdpa(stack, layers, record, heads, rows, current, chunk)
        self._install_unfused(stack, layers, record, heads, rows, current)


class SoftmaxTap(ModuleTap):
    """Sees the softmax a watched module computes on its unfused path (for modules without ``attn_drop``).

    The module's handler gets the softmax output (graph attached) and may return a tensor
    the module goes on with instead (same values), so gradients reach the recorded one.
    """

    what = "softmax"
    _SOFTMAX = (torch.Tensor.softmax, torch.softmax, F.softmax)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.running is not None and func in self._SOFTMAX:
            self.seen += 1
            if self.seen == 1:
                replaced = self.handlers[self.running](out)
                if replaced is not None:
                    out = replaced
        return out


def set_unfused(stack: ExitStack, attn: nn.Module) -> None:
    """Switch one attention module to timm's unfused path for the block; restored by ``stack``."""
    old = attn.fused_attn
    attn.fused_attn = False
    stack.callback(setattr, attn, "fused_attn", old)
