"""Small internal helpers shared across vitlens: index resolution, JSON conversion, model
device lookup, image batching, renamed-parameter deprecation, and result reprs. Not public API."""
from __future__ import annotations

import functools
import html
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------ indices
def resolve_index(value: Any, n: int, what: str, *, owner: str = "model", arg: str | None = None,
                  detail: str | None = None) -> int:
    """A Python-style index into ``n`` items as a non-negative int.

    Args:
        value: the index given, negative counts from the end.
        n: how many items there are.
        what: the singular noun for the message (``"layer"``, ``"block"``, ``"stage"``).
        owner: what has the items (``"model"``): "for this 12-layer model".
        arg: the parameter's name, for "valid `layers` are ..." (default: the plural of ``what``).
        detail: replaces the "for this n-what owner" part, e.g. why fewer items are valid.

    Raises:
        TypeError: not an int (bools are refused).
        ValueError: outside ``-n..n-1``, naming the valid range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{f'`{arg}`' if arg else what} must be {'ints' if arg else 'an int'}, got "
                        f"{type(value).__name__} {value!r}")
    v = int(value)
    if not -n <= v < n:
        where = f": {detail}" if detail else f" for this {n}-{what} {owner}"
        valid = f"`{arg}`" if arg else f"{what}s"
        raise ValueError(f"{what} {v} is out of range{where}; valid {valid} are 0..{n - 1} "
                         f"(or -{n}..-1 counting from the end)")
    return v % n


def resolve_indices(values: Iterable[Any] | int | None, n: int, what: str, *, owner: str = "model",
                    arg: str | None = None, detail: str | None = None, allow_empty: bool = True) -> tuple[int, ...]:
    """Several indices (see :func:`resolve_index`) as a sorted tuple without repeats; one int is one
    index and None is every index.

    Raises:
        ValueError: an index out of range, or (``allow_empty=False``) no index at all.
    """
    if values is None:
        return tuple(range(n))
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    out = tuple(sorted({resolve_index(v, n, what, owner=owner, arg=arg, detail=detail) for v in values}))
    if not out and not allow_empty:
        raise ValueError(f"{f'`{arg}`' if arg else what + 's'} is empty; pass None for every {what}")
    return out


# ------------------------------------------------------------------------ JSON
def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: dicts (keys as str), lists, str, int, float, bool, None.

    Tuples become lists, tensors and arrays their ``tolist()``, numpy scalars Python
    numbers, paths strings; non-finite floats become None (JSON has no NaN); anything
    else becomes its ``str``.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return jsonable(obj.tolist())
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# ------------------------------------------------------------------------ models
def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (then buffer); the CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_model(model: Any, data_config: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any], str | None]:
    """What the analyses accept as ``model``: an ``nn.Module``, a ``LoadedModel`` / ``(model,
    data_config)`` pair, or a name for :func:`vitlens.load_model`. Returns the module, its data
    config (``data_config`` if given, else the pair's, else the model's own) and the name it was
    loaded by (None when a module was given)."""
    from .models import data_config_of, load_model

    name = None
    if isinstance(model, str):
        name = model
        model, cfg = load_model(model)
        data_config = data_config or cfg
    elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        model, cfg = model
        data_config = data_config or cfg
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, a LoadedModel (model, data_config) or a model name, "
                        f"got {type(model).__name__}")
    return model, dict(data_config or data_config_of(model)), name


# ------------------------------------------------------------------------ batches
class Batch(NamedTuple):
    """One batch as the evaluation loops see it."""

    offset: int                   #: position of the first image in the whole input
    images: torch.Tensor          #: ``[B, 3, H, W]`` (only decoded images)
    labels: torch.Tensor | None   #: ``[B]`` or None
    index: torch.Tensor           #: ``[B]`` position of each image in the whole input
    skipped: int                  #: images of this batch left out (failed to decode)


def as_batches(images: Any, labels: torch.Tensor | Sequence[int] | None = None,
               batch_size: int = 64) -> Iterator[Batch]:
    """Normalise the accepted image inputs to batches.

    ``images`` may be

    * a tensor ``[N, 3, H, W]``: split into chunks of ``batch_size``; ``labels`` is
      ``[N]`` or None;
    * an iterable of batches, each a tensor ``[B, 3, H, W]``, a pair
      ``(images, labels)``, or a :class:`vitlens.data.ImageBatch` from
      :func:`vitlens.data.image_batches` (its failed items, ``ok == False``, are skipped
      and counted). A global ``labels`` tensor is indexed by the batch's position in
      the whole input (``ImageBatch.index``, or the running count).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lab = None if labels is None else torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}; "
                             f"add a batch dimension with images[None] for one image")
        if lab is not None and lab.shape[0] != images.shape[0]:
            raise ValueError(f"got {lab.shape[0]} labels for {images.shape[0]} images; give one label per image")
        for s in range(0, images.shape[0], batch_size):
            idx = torch.arange(s, min(s + batch_size, images.shape[0]))
            yield Batch(s, images[s:s + batch_size], None if lab is None else lab[idx], idx, 0)
        return
    if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
        raise TypeError(f"images must be a tensor [N, 3, H, W] or an iterable of batches, got {type(images).__name__}; "
                        f"use vitlens.data.image_batches(paths, data_config) to read files")
    pos = 0
    for item in images:
        skipped = 0
        if hasattr(item, "images") and hasattr(item, "ok"):       # vitlens.data.ImageBatch
            ok = item.ok.bool()
            x = item.images[ok]
            idx = item.index[ok] if hasattr(item, "index") else torch.arange(pos, pos + len(ok))[ok]
            batch_labels = getattr(item, "labels", None)
            y = batch_labels[ok] if batch_labels is not None else None
            skipped = int((~ok).sum())
            n_seen = len(ok)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item[0], torch.as_tensor(item[1], dtype=torch.long).reshape(-1)
            idx = torch.arange(pos, pos + x.shape[0])
            n_seen = x.shape[0]
        elif isinstance(item, torch.Tensor):
            x, y = item, None
            idx = torch.arange(pos, pos + x.shape[0])
            n_seen = x.shape[0]
        else:
            raise TypeError(f"expected batches as image tensors [B, 3, H, W], pairs (images, labels) or "
                            f"ImageBatch objects, got {type(item).__name__}; use "
                            f"vitlens.data.image_batches(paths, data_config) to read files")
        if x.dim() != 4:
            raise ValueError(f"each batch must be [B, 3, H, W], got shape {tuple(x.shape)}")
        if y is None and lab is not None:
            if idx.numel() and int(idx.max()) >= lab.shape[0]:
                raise ValueError(f"got {lab.shape[0]} labels but image number {int(idx.max())} in the input; "
                                 f"give one label per image")
            y = lab[idx]
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"a batch has {x.shape[0]} images but {y.shape[0]} labels")
        yield Batch(pos, x, y, idx, skipped)
        pos += n_seen


# ------------------------------------------------------------------------ renamed parameters
def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Keep old keyword names working for one release, with a :class:`DeprecationWarning`.

    ``@renamed(head_fusion="head")`` lets ``f(head_fusion="max")`` call ``f(head="max")``
    and warn. The wrapper's signature (``inspect.signature``) is the new one; the old
    names are in ``f.__renamed__``.
    """
    def deco(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{f.__name__}() got both {old}= (the old name) and {new}=; pass only {new}=")
                    warnings.warn(f"{f.__name__}({old}=...) is deprecated and will be removed in the next release; "
                                  f"use {new}=...", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return f(*args, **kwargs)

        wrapper.__renamed__ = {**getattr(f, "__renamed__", {}), **old_to_new}  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]
    return deco


def deprecated_alias(new: str, old: str, owner: str) -> property:
    """A read-only property ``old`` that returns attribute ``new`` with a DeprecationWarning."""
    def get(self: Any) -> Any:
        warnings.warn(f"{owner}.{old} is deprecated and will be removed in the next release; use .{new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(self, new)
    return property(get, doc=f"Deprecated name of :attr:`{new}`.")


# ------------------------------------------------------------------------ reprs
def describe(value: Any) -> str:
    """A short description of a value for a repr: tensors and arrays by shape and dtype."""
    if isinstance(value, torch.Tensor):
        dt = str(value.dtype).replace("torch.", "")
        return f"tensor[{', '.join(str(s) for s in value.shape)}] {dt}"
    if isinstance(value, np.ndarray):
        return f"array[{', '.join(str(s) for s in value.shape)}] {value.dtype}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        kind = "list" if isinstance(value, list) else "tuple"
        return f"{kind} of {len(value)}"
    if isinstance(value, dict) and len(value) > 6:
        return f"dict of {len(value)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compact_repr(name: str, fields: Sequence[tuple[str, Any]], summary: str | None = None) -> str:
    """``Name(\\n    field=value,\\n    ...)`` with tensors shown by shape, one field per line."""
    lines = [f"{name}("]
    if summary:
        lines.append(f"    # {summary}")
    lines += [f"    {k}={describe(v)}," for k, v in fields]
    lines.append(")")
    return "\n".join(lines)


def html_table(caption: str, header: Sequence[str], rows: Iterable[Sequence[Any]],
               params: dict[str, Any] | None = None) -> str:
    """A small HTML table for ``_repr_html_``: caption, header row, body rows, then parameters."""
    esc = html.escape
    out = [f"<table><caption style='text-align:left'><b>{esc(caption)}</b></caption>",
           "<thead><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{esc(c if isinstance(c, str) else describe(c))}</td>" for c in row)
                   + "</tr>")
    out.append("</tbody></table>")
    if params:
        items = ", ".join(f"{esc(str(k))}={esc(describe(v))}" for k, v in params.items())
        out.append(f"<p style='font-size:smaller'>parameters: {items}</p>")
    return "\n".join(out)


def maps_repr(name: str, res: Any) -> str:
    """Repr of a batch of maps with logits (:class:`~vitlens.Explanation`, :class:`~vitlens.AttentionMaps`)."""
    maps, logits = res.maps, res.logits
    pred = logits.argmax(-1).tolist() if isinstance(logits, torch.Tensor) and logits.dim() == 2 else None
    fields: list[tuple[str, Any]] = [("maps", maps), ("logits", logits)]
    target = getattr(res, "target", None)
    if isinstance(target, torch.Tensor):
        fields.append(("target", target.tolist() if target.numel() <= 8 else target))
    layout = res.layout
    fields.append(("layout", f"{len(layout.prefix_names)} prefix tokens {tuple(layout.prefix_names)}, grid "
                             f"{tuple(layout.grid_size)}, patch {tuple(layout.patch_size)}" if layout is not None
                   else None))
    fields += [(k, v) for k, v in res.params.items()]
    summary = f"{maps.shape[0]} map(s) by {res.params.get('method')!r}"
    if pred is not None:
        summary += f"; predicted classes {pred if len(pred) <= 8 else str(pred[:8])[:-1] + ', ...]'}"
    if isinstance(maps, torch.Tensor) and maps.numel():
        summary += f"; values {float(maps.min()):.3g}..{float(maps.max()):.3g}"
    return compact_repr(name, fields, summary)


def maps_html(name: str, res: Any) -> str:
    """HTML table of a batch of maps: one row per image (predicted class, target, value range)."""
    maps, logits = res.maps, res.logits
    target = getattr(res, "target", None)
    rows = []
    for i in range(min(int(maps.shape[0]), 32)):
        m = maps[i]
        row = [str(i), str(int(logits[i].argmax())) if logits.dim() == 2 else ""]
        if isinstance(target, torch.Tensor):
            row.append(str(int(target[i])))
        row += [f"{float(m.min()):.3g}", f"{float(m.max()):.3g}", f"{float(m.sum()):.3g}"]
        rows.append(row)
    header = ["image", "predicted"] + (["target"] if isinstance(target, torch.Tensor) else []) + ["min", "max", "sum"]
    return html_table(f"{name}: maps {describe(maps)}", header, rows, res.params)
