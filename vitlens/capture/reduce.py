"""Reduce on record: analyses that consume each layer's attention as it is recorded.

A :class:`Reduction` declares what it needs per layer (``rows``, ``every_layer``) and is
handed each recorded layer's probabilities by the capture machinery right after the
adapter computed them (``update(layer, probs, cache)``); it keeps only its own result
(a CLS row per layer, ``[B, H]`` statistics, one running rollout product) and the
probabilities are dropped. The full tensors are kept only when asked::

    with vitlens.capture(model, reduce=["cls", "rollout", "distance"]) as cache:
        model(x)                        # nothing [B, H, T, T] survives the layer
    vitlens.rollout(cache)              # the analyses read their reductions
    vitlens.cls_attention(cache, layer=3)
    vitlens.mean_attention_distance(cache)

This module is the plumbing only (the protocol, the name registry, the routing). The
reductions themselves -- and their maths, shared with the full-cache path -- live in
:mod:`vitlens.analysis.reductions`, registered here by name.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = ["Reduction", "register_reduction", "reduction_names", "make_reductions", "reduction_of",
           "tensor_bytes"]


class Reduction:
    """Base class of a per-layer reduction fed during the forward by :func:`vitlens.capture`.

    Subclasses set :attr:`kind` (the analysis it serves), :attr:`rows` and
    :attr:`every_layer`, and implement :meth:`update`, :meth:`clear` and
    :meth:`state`. Every forward inside a ``with`` block is one batch: its results are
    appended along the batch dimension, as a plain cache appends tensors.

    Attributes:
        kind: the analysis this reduction serves (``"cls"``, ``"rollout"``, ``"statistic"``).
        rows: what it needs of each layer: ``"prefix"`` (the prefix-token query rows
            suffice) or ``"all"`` (every query row).
        every_layer: it needs every layer of the model from layer 0 (rollout).
        chunked: :meth:`update` takes a layer a few images at a time (``images=``), as
            ``capture(chunk=...)`` hands it over, and keeps no reference to ``probs`` (a
            view of a buffer the next chunk overwrites): it copies what it keeps.
    """

    kind: str = ""
    rows: str = "all"
    every_layer: bool = False
    chunked: bool = False

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that make this reduction's result (matched by :func:`reduction_of`)."""
        return {}

    def check(self, cache: Any) -> None:
        """Refuse a capture configuration this reduction cannot work from (before any forward)."""
        if self.rows == "all" and cache.rows != "all":
            raise ValueError(f"the {self.kind!r} reduction needs every query row; capture with rows='all' "
                             f"(got rows={cache.rows!r})")
        if self.every_layer and list(cache.layers) != list(range(cache.num_layers)):
            raise ValueError(f"the {self.kind!r} reduction multiplies every layer from layer 0 up; this capture "
                             f"records layers {list(cache.layers)} of {cache.num_layers}. Capture with layers=None")

    def update(self, layer: int, probs: torch.Tensor, cache: Any,
               images: slice | None = None) -> None:  # pragma: no cover - abstract
        """Consume one layer's probabilities (as the cache would store them) of the current forward.

        ``images``: with ``capture(chunk=...)``, which images of the forward's batch ``probs``
        holds (the chunks of a layer arrive in order and cover the batch); None: all of them.
        Only reductions that declare :attr:`chunked` are given chunks.
        """
        raise NotImplementedError

    def clear(self) -> None:  # pragma: no cover - abstract
        """Drop every result (a new capture starts)."""
        raise NotImplementedError

    def state(self) -> Iterable[torch.Tensor]:  # pragma: no cover - abstract
        """The tensors this reduction holds now (results and running state), for memory accounting."""
        raise NotImplementedError

    def held_bytes(self) -> int:
        """Bytes of tensor storage this reduction holds now (each storage counted once)."""
        return tensor_bytes(self.state())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


_REGISTRY: dict[str, Callable[[], Reduction]] = {}


def register_reduction(name: str) -> Callable[[Callable[[], Reduction]], Callable[[], Reduction]]:
    """Register a factory (usually the class) under ``name``, for ``capture(reduce=[name, ...])``."""
    def deco(factory: Callable[[], Reduction]) -> Callable[[], Reduction]:
        _REGISTRY[name] = factory
        return factory
    return deco


def reduction_names() -> list[str]:
    """Names ``capture(reduce=...)`` accepts as strings."""
    from ..analysis import reductions  # noqa: F401  (registers the built-in reductions)

    return sorted(_REGISTRY)


def make_reductions(reduce: Sequence[Reduction | str] | Reduction | str) -> list[Reduction]:
    """Turn ``capture``'s ``reduce=`` argument into reduction objects (each cleared)."""
    if isinstance(reduce, (str, Reduction)):
        reduce = [reduce]
    out: list[Reduction] = []
    for r in reduce:
        if isinstance(r, str):
            names = reduction_names()
            if r not in _REGISTRY:
                import difflib

                close = difflib.get_close_matches(r, names, n=1)
                raise ValueError(f"unknown reduction {r!r}; reduce= takes {names} or Reduction objects "
                                 f"(vitlens.reductions)" + (f"; did you mean {close[0]!r}?" if close else ""))
            r = _REGISTRY[r]()
        if not isinstance(r, Reduction):
            raise TypeError(f"reduce= takes reduction names {reduction_names()} or vitlens.reductions objects, "
                            f"got {type(r).__name__} {r!r}")
        if any(r is o for o in out):
            raise ValueError(f"reduce= lists the same {r!r} object twice")
        r.clear()
        out.append(r)
    return out


def reduction_of(cache: Any, kind: str, **params: Any) -> Reduction | None:
    """The cache's reduction of ``kind`` whose parameters include ``params``, or None."""
    for r in getattr(cache, "reductions", ()) or ():
        if r.kind == kind and all(r.params.get(k) == v for k, v in params.items()):
            return r
    return None
