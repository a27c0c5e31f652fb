"""Reduce-on-record versions of the attention analyses (``vitlens.reductions``).

Pass them (or their names) to :func:`vitlens.capture` and each recorded layer is reduced
as the forward produces it, then dropped; the usual analysis functions read the results::

    with vitlens.capture(model, reduce=["cls", "rollout", "distance"]) as cache:
        model(x)
    vitlens.cls_attention(cache, layer=-1)     # from the kept CLS rows
    vitlens.rollout(cache)                     # from the running product
    vitlens.mean_attention_distance(cache)     # from the per-layer [B, H] values

| name | class | keeps per batch |
|---|---|---|
| ``"cls"`` | :class:`ClsRows` | ``A_l[:, :, cls, prefix:]`` per layer, ``[B, H, N]`` |
| ``"rollout"`` | :class:`Rollout` | one running product ``R`` ``[B, T, T]`` (Swin: the head-fused windows) |
| ``"distance"`` / ``"entropy"`` | :class:`HeadStatistic` | ``[B, H]`` per layer |

Every formula is the one the full-cache analysis uses (:func:`~vitlens.analysis.cls_attention.cls_rows`,
:func:`~vitlens.analysis.rollout.fused_layer` / :func:`~vitlens.analysis.rollout.residual_step`,
:func:`~vitlens.analysis.distance.layer_statistic`); only the rollout product runs in the
other order (forward, ``R ← Â_l·R``, instead of a row vector pushed down from the last
layer), which reorders floating point: maps agree to ~1e-7.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from ..capture.cache import WindowLayout
from ..capture.reduce import Reduction, register_reduction
from .cls_attention import HEAD_FUSIONS, cls_rows
from .distance import STATISTICS, layer_statistic
from .rollout import (finish_map, fused_layer, readout_vector, residual_step, windowed_chain,
                      windowed_fused_layer)

__all__ = ["Reduction", "ClsRows", "Rollout", "HeadStatistic", "held_bytes_estimate"]


class _PerLayer(Reduction):
    """Keeps one small tensor per recorded layer and forward (or image chunk), concatenated over
    forwards: chunks arrive in batch order, so the concatenation is the same."""

    chunked = True

    def __init__(self) -> None:
        self._per: dict[int, list[torch.Tensor]] = {}

    def clear(self) -> None:
        self._per = {}

    def state(self) -> Iterable[torch.Tensor]:
        return [t for chunks in self._per.values() for t in chunks]

    def has(self, layer: int) -> bool:
        return bool(self._per.get(layer))

    def _of(self, layer: int) -> torch.Tensor:
        chunks = self._per[layer]
        if len(chunks) > 1:
            self._per[layer] = chunks = [torch.cat(chunks, dim=0)]
        return chunks[0]

    def _put(self, layer: int, value: torch.Tensor) -> None:
        self._per.setdefault(layer, []).append(value)


@register_reduction("cls")
class ClsRows(_PerLayer):
    """The CLS query's attention over the patch keys of every recorded layer, ``[B, H, N]`` each.

    Serves :func:`vitlens.cls_attention` (any ``layer``, ``head``, ``renormalize``). Needs only
    the prefix rows, so it works with ``capture(rows="prefix")``. A model without CLS token
    is refused at its first layer.
    """

    kind = "cls"
    rows = "prefix"

    def update(self, layer: int, probs: torch.Tensor, cache: Any, images: slice | None = None) -> None:
        # clone: a row of a float32 tensor is a view that would keep the whole [B, H, T, T] alive
        self._put(layer, cls_rows(probs, cache.layout).clone())

    def rows_of(self, layer: int) -> torch.Tensor:
        """``[B, H, N]`` float32 CLS rows of ``layer`` over every forward so far."""
        return self._of(layer)


@register_reduction("rollout")
class Rollout(Reduction):
    """Attention rollout (Abnar & Zuidema 2020) computed during the forward.

    Token-level models keep one running product ``R ← Â_l·R`` (``[B, T, T]`` float32, where
    ``Â_l = D⁻¹(½·A_l + ½·I)`` from :func:`~vitlens.analysis.rollout.residual_step`), so the
    memory held does not grow with depth; after the last layer the map (CLS row of ``R``,
    or mean patch row) is kept, ``[B, gh, gw]``. Windowed models (Swin) keep each block's
    head-fused ``[B, nW, n, n]`` (1/heads of the recorded tensors) and run the stage-wise
    chain with its patch-merging steps (:func:`~vitlens.analysis.rollout.windowed_chain`)
    after the last block. Serves :func:`vitlens.rollout` with the same
    ``head`` and ``discard_ratio`` (not ``exclude``, which needs the full cache).

    Args:
        head: the head fusion, ``"mean"`` | ``"max"`` | ``"min"``.
        discard_ratio: in ``[0, 1)``.
    """

    kind = "rollout"
    rows = "all"
    every_layer = True
    chunked = True

    def __init__(self, head: str = "mean", discard_ratio: float = 0.0) -> None:
        if head not in HEAD_FUSIONS:
            raise ValueError(f"head must be one of {HEAD_FUSIONS}, got {head!r}")
        if not 0.0 <= float(discard_ratio) < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        self.head, self.discard_ratio = head, float(discard_ratio)
        self.clear()

    @property
    def params(self) -> dict[str, Any]:
        return {"head": self.head, "discard_ratio": self.discard_ratio}

    def clear(self) -> None:
        self._R: torch.Tensor | None = None
        self._first: list[torch.Tensor] = []   # layer 0's chunks of R, joined when layer 1 starts
        self._fused: dict[int, torch.Tensor] = {}
        self._maps: list[torch.Tensor] = []

    def state(self) -> Iterable[torch.Tensor]:
        return [*([self._R] if self._R is not None else []), *self._first, *self._fused.values(), *self._maps]

    def update(self, layer: int, probs: torch.Tensor, cache: Any, images: slice | None = None) -> None:
        start = 0 if images is None else images.start
        if layer == 0 and start == 0:       # a new forward: drop a product an earlier one left unfinished
            self._R, self._first, self._fused = None, [], {}
        last = layer == cache.num_layers - 1
        geometry = cache.layout_of(layer)
        if isinstance(geometry, WindowLayout):
            if images is not None:
                raise ValueError("the windowed rollout reduction takes whole layers (capture(chunk=...) computes "
                                 "token-level layers only)")
            self._fused[layer] = windowed_fused_layer(probs, geometry, self.head, self.discard_ratio)
            if last:
                windows = [cache.layout_of(i) for i in range(cache.num_layers)]
                self._maps.append(windowed_chain(self._fused.__getitem__, windows, cache.layout.grid_size))
                self._fused = {}
            return
        P, cls = geometry.num_prefix_tokens, geometry.cls_index
        a = fused_layer(probs, self.head, self.discard_ratio, P, cls)     # [b, T, T]
        if layer > 0 and self._first:        # every chunk of layer 0 is in: one product for the batch
            self._R, self._first = torch.cat(self._first) if len(self._first) > 1 else self._first[0], []
        R = None if layer == 0 else self._R[start:start + a.shape[0]]
        if last:
            # only the readout row of the final product is kept: u·Â_L·R (a vector step and one
            # [b, T] x [b, T, T] product), not the full Â_L·R
            u = readout_vector(a.shape[0], a.shape[-1], P, cls, a)
            v = residual_step(a, u, left=False)
            m = (v if R is None else (v.unsqueeze(1) @ R).squeeze(1))[:, P:]
            self._maps.append(finish_map(m, None, geometry.grid_size))
            if self._R is not None and (images is None or images.stop >= self._R.shape[0]):
                self._R = None               # the batch's last chunk: the product is done
            return
        # the first layer's product with the identity is Â_0 itself (no T x T x T product)
        new = residual_step(a, R, left=True)
        if R is None:
            self._first.append(new)
        elif images is None:
            self._R = new
        else:
            R.copy_(new)                     # the chunk's rows of the running product, in place

    def ready(self) -> bool:
        """A map exists for every finished forward (at least one)."""
        return bool(self._maps)

    def maps(self) -> torch.Tensor:
        """``[B, gh, gw]`` float32 rollout maps over every finished forward, each summing to 1."""
        if len(self._maps) > 1:
            self._maps = [torch.cat(self._maps, dim=0)]
        return self._maps[0]


class HeadStatistic(_PerLayer):
    """Mean attention distance or attention entropy of every recorded layer, ``[B, H]`` each.

    Serves :func:`vitlens.mean_attention_distance` / :func:`vitlens.attention_entropy`
    (:func:`~vitlens.analysis.distance.layer_statistic` is the formula of both paths).

    Args:
        statistic: ``"distance"`` or ``"entropy"``.
    """

    kind = "statistic"
    rows = "all"

    def __init__(self, statistic: str = "distance") -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {list(STATISTICS)}, got {statistic!r}")
        self.statistic = statistic
        super().__init__()

    @property
    def params(self) -> dict[str, Any]:
        return {"statistic": self.statistic}

    def update(self, layer: int, probs: torch.Tensor, cache: Any, images: slice | None = None) -> None:
        self._put(layer, layer_statistic(probs.detach(), cache.layout_of(layer), self.statistic))

    def values_of(self, layer: int) -> torch.Tensor:
        """``[B, H_l]`` float32 values of ``layer`` over every forward so far."""
        return self._of(layer)


register_reduction("distance")(lambda: HeadStatistic("distance"))
register_reduction("entropy")(lambda: HeadStatistic("entropy"))


def held_bytes_estimate(*, batch: int, layers: int, heads: int, tokens: int, prefix: int = 1,
                        reduce: tuple[str, ...] = ("cls", "rollout", "distance"), itemsize: int = 4,
                        chunk: int | None = None) -> dict[str, Any]:
    """Predicted bytes of attention held by one forward of a token-level model (no windows).

    What the capture holds between layers (the recorded layer's own ``[B, H, T, T]`` exists
    while that layer runs in both cases, as in the model's unfused forward):

    - ``"full"``: a plain capture after the last layer, ``L·B·H·T²·itemsize``;
    - ``"reduced_after_layer"``: ``capture(reduce=reduce)`` after each layer: the running
      rollout product ``B·T²`` (the ``B·N`` maps after the last layer), a CLS row
      ``B·H·N`` per layer, ``B·H`` per layer for each statistic; float32 (``itemsize``
      applies to the full cache only, which stores the model's dtype);
    - ``"reduced_peak"``: the largest of those;
    - ``"layer_transient"``: while a layer is reduced: its probabilities plus rollout's
      fused ``A_l`` and the new product, ``B·H·T²·itemsize + 2·B·T²·4``; with ``chunk``
      images per chunk (``capture(chunk=...)``) ``b = min(B, chunk)`` replaces ``B``.

    ``tests/unit/test_reduce.py`` checks ``full`` and ``reduced_after_layer`` against live
    tensor storage counted after every layer.
    """
    B, L, H, T, N = batch, layers, heads, tokens, tokens - prefix
    b = B if chunk is None else min(B, chunk)                 # images whose probabilities exist at once
    after = []
    for layer in range(L):
        n = 0
        if "rollout" in reduce:
            n += B * N * 4 if layer == L - 1 else B * T * T * 4
        if "cls" in reduce:
            n += (layer + 1) * B * H * N * 4
        n += sum((layer + 1) * B * H * 4 for s in ("distance", "entropy") if s in reduce)
        after.append(n)
    return {"full": L * B * H * T * T * itemsize, "reduced_after_layer": after, "reduced_peak": max(after),
            "layer_transient": b * H * T * T * itemsize + (2 * b * T * T * 4 if "rollout" in reduce else 0)}
