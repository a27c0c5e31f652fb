"""Small internal helpers shared across vitlens: index resolution, JSON conversion, model
device lookup, renamed-parameter deprecation, and result reprs. Not public API."""
from __future__ import annotations

import functools
import html
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------ indices
def resolve_index(value: Any, n: int, what: str, *, owner: str = "model") -> int:
    """A Python-style index into ``n`` items as a non-negative int.

    Args:
        value: the index given, negative counts from the end.
        n: how many items there are.
        what: the singular noun for the message (``"layer"``, ``"block"``, ``"stage"``).
        owner: what has the items (``"model"``).

    Raises:
        TypeError: not an int (bools are refused).
        ValueError: outside ``-n..n-1``, naming the valid range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if not -n <= v < n:
        raise ValueError(f"{what} {v} is out of range for this {n}-{what} {owner}; "
                         f"valid {what}s are 0..{n - 1} (or -{n}..-1 counting from the end)")
    return v % n


def resolve_indices(values: Iterable[Any], n: int, what: str, *, owner: str = "model") -> tuple[int, ...]:
    """Several indices (see :func:`resolve_index`) as a sorted tuple without repeats."""
    return tuple(sorted({resolve_index(v, n, what, owner=owner) for v in values}))


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
