"""``vitlens.capture``: the context manager that records attention with hooks."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .._util import resolve_indices
from .adapters import adapter_for
from .cache import AttentionCache
from .reduce import Reduction, make_reductions

_ROWS = ("all", "prefix")


@contextmanager
def capture(model: nn.Module, layers: Sequence[int] | int | None = None, *,
            heads: Sequence[int] | None = None, rows: str = "all",
            dtype: torch.dtype | None = None, to: torch.device | str | None = None,
            grad: bool = False, reduce: Sequence[Reduction | str] | Reduction | str | None = None,
            keep: bool | Sequence[int] | int | None = None,
            chunk: int | str | None = None) -> Iterator[AttentionCache]:
    """Record per-layer, per-head attention probabilities of a timm ViT (or Swin).

    Example::

        with vitlens.capture(model) as cache:
            logits = model(x)
        cache.attention(-1)          # [B, heads, T, T], last layer
        cache.layout.grid_size       # (gh, gw)

    Swin / SwinV2 record ``[B, num_windows, heads, n, n]`` per layer (layers numbered in
    forward order across stages); ``cache.dense_attention(l)`` gives stage coordinates
    and ``cache.layout_of(l)`` the window geometry (see ``docs/swin.md``).

    Hooks exist only inside the block and are removed on exit, also when the forward
    raises; every module flag changed for the block is restored. By default the model
    keeps timm's fused attention and its outputs are bit-identical to a run without
    capture: the probabilities are recomputed from the module's own q and k (``grad``
    and ``chunk`` trade that for one computation of each layer; see below).

    Args:
        model: a supported timm model (see ``vitlens.supported_families()``).
        layers: layer indices to record (negative counts from the end); None = all.
            Layers not recorded keep running untouched.
        heads: head indices to record; None = all. When the head count varies by layer
            (Swin stages), indices must exist in every recorded layer.
        rows: ``"all"`` records ``[B, heads, T, T]``; ``"prefix"`` records only the
            prefix-token query rows ``[B, heads, P, T]`` (e.g. the CLS row), computed
            without materialising the T x T matrix.
        dtype: storage dtype (e.g. ``torch.float16``); default the model's compute dtype.
        to: storage device; default the model's device.
        grad: record the probabilities the model itself multiplies with v, attached
            to the autograd graph (switches the recorded blocks to timm's unfused
            path for the duration of the block), for gradient-based methods.
        reduce: reductions fed each layer as it is recorded (names or
            :mod:`vitlens.reductions` objects); the full tensors are then kept only for
            ``keep``.
        keep: with ``reduce``, the layers whose full tensors are kept too (True: all;
            default none).
        chunk: with ``reduce`` and ``rows="all"``: vitlens computes each recorded layer
            that calls ``scaled_dot_product_attention`` (timm's ViT family: ViT, DeiT,
            EVA, BEiT, ...) itself, ``chunk`` images at a time (``"auto"``: about 4 MB
            of probabilities per chunk on the CPU, 256 MB on an accelerator), and hands
            each chunk to the reductions while it is in the CPU's cache. A layer's
            whole ``[B, heads, T, T]`` then never exists, and the buffers are reused from
            chunk to chunk and layer to layer (no fresh allocation per layer, as timm's
            unfused path makes). The outputs are those of timm's unfused attention (equal
            to the fused kernel's to ~1e-6, not bit-identical). Other layers and families
            record each layer whole. ``vitlens export`` passes ``"auto"`` on an accelerator.

    Yields:
        The :class:`AttentionCache`, filled by every forward inside the block.
    """
    adapter = adapter_for(model)
    modules = adapter.attention_modules()
    n_layers, n_heads = len(modules), adapter.num_heads
    layer_list = _resolve_indices(layers, n_layers, "layer", "layers")
    layer_heads = tuple(int(adapter.heads_of(i)) for i in range(n_layers))
    fewest = min(layer_heads[i] for i in layer_list)
    varies = len(set(layer_heads)) > 1
    head_list = None if heads is None else _resolve_indices(
        heads, fewest, "head", "heads",
        has=(f"the recorded layers have as few as {fewest} heads (heads per layer: {list(layer_heads)})"
             if varies else None))
    if rows not in _ROWS:
        raise ValueError(f"rows must be one of {_ROWS}, got {rows!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float16, got {dtype!r}")
    if rows == "prefix" and not adapter.num_prefix_tokens:
        raise ValueError(f"rows='prefix' records the prefix-token rows, but "
                         f"{type(model).__name__} has no prefix tokens; use rows='all'")
    target = torch.device(to) if to is not None else None
    reductions = make_reductions(reduce) if reduce is not None else []
    if keep is None:
        keep = not reductions
    kept = None if keep is True else (() if keep is False else tuple(_resolve_indices(keep, n_layers, "layer", "keep")))
    if kept is not None and any(i not in layer_list for i in kept):
        raise ValueError(f"keep={list(kept)} names layers that are not recorded (layers={layer_list}); "
                         f"keep only recorded layers")
    if kept == () and not reductions:
        raise ValueError("keep=False with no reduce= records nothing; pass reduce=[...] or keep=True")
    if chunk is not None:
        _check_chunk(chunk, reductions, grad)

    cache = AttentionCache(
        model_name=str(getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)),
        family=adapter.family, num_layers=n_layers, num_heads=n_heads, layers=layer_list,
        heads=tuple(head_list) if head_list is not None else tuple(range(n_heads)),
        rows=rows, hook_points={i: modules[i][0] for i in layer_list},
        layer_heads=layer_heads if varies else (), _describe=adapter.describe, reductions=reductions, kept=kept)
    for r in reductions:
        r.check(cache)

    checked: set[int] = set()

    def record(layer: int, probs: torch.Tensor, images: slice | None = None) -> None:
        if layer not in checked:
            _check_first_record(adapter, layer, probs, head_list)
            checked.add(layer)
        if not grad:
            probs = probs.detach()
        if dtype is not None or target is not None:
            probs = probs.to(device=target, dtype=dtype)
        if kept is None or layer in kept:
            # a chunk is a view of a buffer the next chunk reuses (generic.Workspace): copy it
            cache._record(layer, probs if images is None else probs.clone())
        for r in reductions:  # each consumes the layer now; nothing else holds probs afterwards
            if images is None:
                r.update(layer, probs, cache)
            else:
                r.update(layer, probs, cache, images=images)

    # Every hook and flag is registered on the stack as it is installed, so an install
    # that fails half-way, a forward that raises and a normal exit all undo everything.
    with ExitStack() as stack:
        if grad:
            adapter.grad_context(stack)
        adapter.install(stack, layer_list, record, heads=head_list, rows=rows, grad=grad,
                        set_layout=cache._set_layout, **({"chunk": chunk} if adapter.chunks else {}))
        yield cache


def valid_chunk(chunk: object) -> bool:
    """A ``chunk=`` value: ``"auto"`` or a positive number of images (not a bool)."""
    return chunk == "auto" or (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1)


def _check_chunk(chunk: int | str, reductions: list[Reduction], grad: bool) -> None:
    if not valid_chunk(chunk):
        raise ValueError(f"chunk must be a positive number of images or 'auto', got {chunk!r}")
    if not reductions:
        raise ValueError("chunk= computes the attention in image chunks for reduce on record; "
                         "pass reduce=[...] too (a plain capture keeps every layer whole anyway)")
    if grad:
        raise ValueError("chunk= computes the attention itself, without a graph; grad=True records the "
                         "model's own probabilities with their graph. Use one or the other")
    whole = [r for r in reductions if not r.chunked]
    if whole:
        raise ValueError(f"chunk= hands each layer to the reductions a few images at a time, but {whole[0]!r} "
                         f"takes whole layers only (Reduction.chunked is False); leave chunk=None")


def _check_first_record(adapter, layer: int, probs: torch.Tensor, head_list: list[int] | None) -> None:
    """Refuse a recording that is not what the adapter promised (checked once per layer and capture).

    Head count: the recorded heads must be the requested ones (all heads of the layer by
    default); rows of softmax attention must sum to 1 (checked on the first image).
    """
    from ..errors import UnsupportedModelError

    windowed = probs.dim() == 5
    n_heads = probs.shape[2] if windowed else probs.shape[1]
    want = len(head_list) if head_list is not None else int(adapter.heads_of(layer))
    path = adapter.attention_modules()[layer][0]
    if n_heads != want:
        raise UnsupportedModelError(
            f"{path} produced {n_heads} attention heads but the model declares {want}; vitlens "
            f"refuses to record weights it cannot map to heads exactly")
    if not adapter.layer_softmax(layer):  # declared non-probability weights (LayerSpec.softmax=False)
        if not bool(torch.isfinite(probs[:1].detach()).all()):
            raise UnsupportedModelError(f"{path} produced non-finite attention weights; vitlens refuses to record them")
        return
    with torch.no_grad():
        sums = probs[:1].detach().float().sum(-1)
        worst = float((sums - 1).abs().max()) if sums.numel() else 0.0
    if not worst <= 1e-3:  # also catches NaN
        raise UnsupportedModelError(
            f"{path} produced attention rows that do not sum to 1 (largest deviation {worst:.3g}); "
            f"they are not softmax probabilities over the keys, so vitlens refuses to record them")


def _resolve_indices(values: Sequence[int] | int | None, n: int, what: str, arg: str,
                     has: str | None = None) -> list[int]:
    """Layers or heads to record: every one for None; an empty selection is an error."""
    return list(resolve_indices(values, n, what, arg=arg, detail=has or f"the model has {n} {what}s",
                                allow_empty=False))
