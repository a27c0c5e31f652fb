"""Per-head statistics of attention: mean attention distance and attention entropy, and their
streaming aggregation over a dataset (:class:`HeadStatistics`, :func:`head_statistics`)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._util import as_batches, describe, html_table, model_device, renamed
from ..capture.cache import AttentionCache, TokenLayout, WindowLayout
from ..capture.reduce import reduction_of

#: Statistics :func:`head_statistics` can compute, name -> (function of a cache, unit).
STATISTICS: dict[str, tuple[str, str]] = {
    "distance": ("mean_attention_distance", "pixels"),
    "entropy": ("attention_entropy", "nats"),
}

# Upper bound on elements of one temporary [chunk, H, N, N] block (1 MB in float32): small enough
# that the patch-mass sum, the distance product and its sum read the block from the CPU cache
# (one ViT-S layer at batch 16, one thread: 5.4 ms instead of 7.2 ms with 64 MB blocks; same values,
# since each image is computed alike in any chunk).
_CHUNK_ELEMENTS = 1 << 18


def patch_distance_matrix(grid_size: tuple[int, int], patch_size: tuple[int, int],
                          device: torch.device | str | None = None) -> torch.Tensor:
    """``[N, N]`` Euclidean distance between patch centres in input pixels (row-major grid).

    Patch ``(r, c)`` has its centre at ``((r + 0.5)·ph, (c + 0.5)·pw)``; the distance between
    patches ``i`` and ``j`` is ``sqrt(((r_i - r_j)·ph)² + ((c_i - c_j)·pw)²)``. Non-square
    grids and non-square patches are fine.
    """
    (gh, gw), (ph, pw) = grid_size, patch_size
    ys = (torch.arange(gh, device=device, dtype=torch.float64) + 0.5) * ph
    xs = (torch.arange(gw, device=device, dtype=torch.float64) + 0.5) * pw
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    centers = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)
    return torch.cdist(centers, centers).float()


@functools.lru_cache(maxsize=16)
def _distances(grid_size: tuple[int, int], patch_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """:func:`patch_distance_matrix`, made once per geometry: reduce on record asks for it per layer
    and image chunk (read only)."""
    return patch_distance_matrix(grid_size, patch_size, device)


def _window_distances(window: WindowLayout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window: ``[nW, n, n]`` distance in input pixels between the stage tokens at each pair of
    window positions (cyclic shift undone: true stage positions), and ``[nW, n]`` real (non-padding)."""
    idx = window.token_index(device)
    real = idx >= 0
    w = window.grid_size[1]
    ph, pw = window.patch_size
    safe = idx.clamp_min(0)
    y = (safe // w).double() * ph
    x = (safe % w).double() * pw
    d = torch.sqrt((y[:, :, None] - y[:, None, :]) ** 2 + (x[:, :, None] - x[:, None, :]) ** 2)
    return d.float(), real


def _resolve_layers(cache: AttentionCache, layers: Sequence[int] | int | None) -> list[int]:
    if cache.rows != "all":
        raise ValueError("per-head statistics average over every patch query; capture with rows='all' "
                         f"(this cache has rows={cache.rows!r}, only the prefix-token rows)")
    if cache.layout is None:
        raise ValueError("nothing was recorded: run the model inside the "
                         "`with vitlens.capture(model) as cache:` block")
    if layers is None:
        return list(cache.layers)
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    out = [cache.resolve_layer(layer) for layer in layers]
    missing = [layer for layer in out if layer not in cache.layers]
    if missing:
        raise ValueError(f"layers {missing} were not recorded (recorded layers: {cache.layers}); "
                         f"capture them or pass layers=None for every recorded layer")
    return out


def _flat_stat(attn: torch.Tensor, prefix: int, kind: str, dist: torch.Tensor | None) -> torch.Tensor:
    """``[B, H, T, T]`` -> ``[B, H]`` for one layer of a flat (ViT-like) model."""
    B, H, T, _ = attn.shape
    N = T - prefix
    chunk = max(1, _CHUNK_ELEMENTS // max(1, H * N * N))
    out = []
    for b0 in range(0, B, chunk):
        w = attn[b0:b0 + chunk, :, prefix:, prefix:].float()        # patch queries x patch keys
        s = w.sum(-1).clamp_min(torch.finfo(torch.float32).tiny)    # [b, H, N] patch mass per query
        if kind == "distance":
            assert dist is not None
            per_query = torch.linalg.vecdot(w, dist) / s           # renormalised expectation
        else:
            p = w / s[..., None]
            per_query = -torch.special.xlogy(p, p).sum(-1)
        out.append(per_query.mean(-1))
    return torch.cat(out, dim=0)


def _windowed_stat(attn: torch.Tensor, window: WindowLayout, kind: str) -> torch.Tensor:
    """``[B, nW, H, n, n]`` -> ``[B, H]`` for one windowed (Swin) block, in stage coordinates."""
    dist, real = _window_distances(window, attn.device)
    B, nW, H, n, _ = attn.shape
    keys = real[None, :, None, None, :].float()
    queries = real[None, :, None, :].float()                         # [1, nW, 1, n]
    n_queries = real.sum()
    chunk = max(1, _CHUNK_ELEMENTS // max(1, nW * H * n * n))
    out = []
    for b0 in range(0, B, chunk):
        w = attn[b0:b0 + chunk].float() * keys                      # padding keys dropped
        s = w.sum(-1).clamp_min(torch.finfo(torch.float32).tiny)    # [b, nW, H, n]
        if kind == "distance":
            per_query = (w * dist[None, :, None]).sum(-1) / s
        else:
            p = w / s[..., None]
            per_query = -torch.special.xlogy(p, p).sum(-1)
        out.append((per_query * queries).sum(dim=(1, 3)) / n_queries)
    return torch.cat(out, dim=0)


def layer_statistic(attn: torch.Tensor, geometry: TokenLayout | WindowLayout, kind: str) -> torch.Tensor:
    """One layer's ``[B, H]`` statistic (``kind`` ``"distance"`` or ``"entropy"``) from its recorded
    probabilities and geometry (``cache.layout_of(layer)``). The full-cache functions and the
    reduce-on-record ``HeadStatistic`` both call this, so the formulas exist once."""
    if isinstance(geometry, WindowLayout):
        return _windowed_stat(attn, geometry, kind)
    dist = _distances(tuple(geometry.grid_size), tuple(geometry.patch_size), attn.device) if kind == "distance" else None
    return _flat_stat(attn, geometry.num_prefix_tokens, kind, dist)


def stack_layers(per: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer ``[B, H_l]`` -> ``[B, L, max H_l]``, NaN for heads a layer does not have."""
    width = max(p.shape[1] for p in per)
    out = torch.full((per[0].shape[0], len(per), width), float("nan"), dtype=torch.float32, device=per[0].device)
    for i, p in enumerate(per):
        out[:, i, :p.shape[1]] = p
    return out


def _per_layer(cache: AttentionCache, layers: Sequence[int] | int | None, kind: str) -> torch.Tensor:
    chosen = _resolve_layers(cache, layers)
    assert cache.layout is not None
    cache.require_token_attention("mean attention distance and entropy", chosen)
    reduced = reduction_of(cache, "statistic", statistic=kind)
    per: list[torch.Tensor] = []
    for layer in chosen:
        if reduced is not None and reduced.has(layer):   # captured with reduce=[kind, ...]
            per.append(reduced.values_of(layer))
        else:
            per.append(layer_statistic(cache.attention(layer).detach(), cache.layout_of(layer), kind))
    return stack_layers(per)


def mean_attention_distance(cache: AttentionCache, layers: Sequence[int] | int | None = None) -> torch.Tensor:
    """Mean attention distance per image, layer and head, in input pixels.

    Dosovitskiy et al. 2021, Fig. 7 (https://arxiv.org/abs/2010.11929) and Raghu et al. 2021
    (https://arxiv.org/abs/2108.08810); DESIGN.md §4 (contract). For layer ``l``, head ``h``
    and one image, with ``A`` the attention probabilities restricted to patch queries ``q``
    and patch keys ``k`` (prefix tokens -- CLS, distillation, registers -- excluded on both
    sides) and ``d(q, k)`` the Euclidean distance between the patch centres in input pixels::

        w[q, k] = A[h, q, k] / Σ_k' A[h, q, k']          (renormalised over patch keys)
        D[l, h] = (1 / N) · Σ_q Σ_k w[q, k] · d(q, k)     (N patch queries)

    Patch ``(r, c)`` is centred at ``((r + 0.5)·ph, (c + 0.5)·pw)`` with the layout's patch
    size, so non-square grids and patches are handled. Uniform attention over a 14x14 grid
    of 16-px patches gives ≈116.5 px.

    Windowed models (Swin, SwinV2) are supported per block in that block's stage
    coordinates (cyclic shift undone): the keys are the real (non-padding) tokens of the
    query's window, renormalised; the queries are the real tokens of every window; the
    distance uses the stage's patch size in input pixels (the patch embedding's patch,
    doubled by every patch merging; ``cache.layout_of(l).patch_size``). A Swin head
    cannot exceed its window's extent, so values are bounded by the window diagonal.

    Memory: one ``[N, N]`` distance matrix per layer shared across images and heads; the
    products are computed in chunks of images (about 1 MB of temporaries; one image when larger).

    Args:
        cache: from :func:`vitlens.capture` with ``rows="all"``.
        layers: recorded layers to use (negative counts from the end); None = every
            recorded layer, in ``cache.layers`` order.

    Returns:
        ``[B, L, H]`` float32, pixels: ``L`` the chosen layers in order, ``H`` the recorded
        heads (``cache.heads``). When the head count varies by layer (Swin stages),
        ``H`` is the largest and missing heads are NaN.

    Raises:
        ValueError: the cache was captured with ``rows="prefix"``, is empty, or a layer
            was not recorded.
    """
    return _per_layer(cache, layers, "distance")


def attention_entropy(cache: AttentionCache, layers: Sequence[int] | int | None = None) -> torch.Tensor:
    """Attention entropy per image, layer and head, in nats.

    The Shannon entropy of each patch query's attention distribution over the patch keys,
    averaged over the patch queries (as in Dosovitskiy-style head analyses, e.g. Caron et
    al. 2021's "local vs global" heads; Zhai et al. 2023, https://arxiv.org/abs/2303.06296,
    track it per layer)::

        p[q, k] = A[h, q, k] / Σ_k' A[h, q, k']           (patch keys only, renormalised)
        E[l, h] = (1 / N) · Σ_q ( -Σ_k p[q, k] · ln p[q, k] )

    Prefix keys (CLS, distillation, registers) are dropped and the rest renormalised, the
    same convention as :func:`mean_attention_distance`, so both describe the same
    distribution; the mass a query puts on prefix tokens is not in either statistic.
    Uniform attention over N patches gives ``ln N``; attention on one patch gives 0.
    Windowed models (Swin): over the real keys of the query's window (uniform gives
    ``ln n``, ``n`` real tokens of the window).

    Args:
        cache: from :func:`vitlens.capture` with ``rows="all"``.
        layers: recorded layers to use; None = every recorded layer.

    Returns:
        ``[B, L, H]`` float32, nats (NaN for heads a layer does not have, as in
        :func:`mean_attention_distance`).
    """
    return _per_layer(cache, layers, "entropy")


_FUNCTIONS: dict[str, Callable[[AttentionCache, Sequence[int] | None], torch.Tensor]] = {
    "distance": mean_attention_distance,
    "entropy": attention_entropy,
}


@dataclass
class HeadStatistics:
    """Streaming mean and standard deviation of a per-image ``[B, L, H]`` statistic.

    Feed batches with :meth:`update`; the running mean and sum of squared deviations are
    merged with Chan et al.'s parallel formula (Welford's update for a batch), so the
    result does not depend on batching and does not lose precision over long datasets
    (float64 accumulators). NaN entries (heads a layer does not have) are not counted;
    rows whose ``ok`` is False (undecodable images) are skipped and counted in ``failed``.

    Attributes:
        statistic: what the values are (``"distance"``, ``"entropy"`` or your own name).
        unit: their unit (``"pixels"``, ``"nats"``...).
        layers: layer index of each row of ``mean``/``std``.
        params: how the values were made (model, input size, patch size, ...).
        images: images accumulated (ok rows).
        failed: rows skipped because ``ok`` was False.
        count: ``[L, H]`` values accumulated per entry (``images`` unless NaN entries).
    """

    statistic: str = "distance"
    unit: str = "pixels"
    layers: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    images: int = 0
    failed: int = 0
    count: torch.Tensor | None = None
    _mean: torch.Tensor | None = field(default=None, repr=False)
    _m2: torch.Tensor | None = field(default=None, repr=False)

    def update(self, values: torch.Tensor, ok: torch.Tensor | Sequence[bool] | None = None) -> "HeadStatistics":
        """Add a batch of per-image values.

        Args:
            values: ``[B, L, H]`` (e.g. from :func:`mean_attention_distance`).
            ok: optional ``[B]`` bool; False rows are skipped and counted as failed.

        Returns:
            self, for chaining.
        """
        if not isinstance(values, torch.Tensor) or values.dim() != 3:
            raise ValueError(f"values must be a [B, L, H] tensor, got "
                             f"{tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}")
        x = values.detach().to("cpu", torch.float64)
        if ok is not None:
            okt = torch.as_tensor(ok, dtype=torch.bool).reshape(-1).cpu()
            if okt.numel() != x.shape[0]:
                raise ValueError(f"ok has {okt.numel()} entries for a batch of {x.shape[0]} values")
            self.failed += int((~okt).sum())
            x = x[okt]
        if self._mean is not None and x.shape[1:] != self._mean.shape:
            raise ValueError(f"values of shape [B, {x.shape[1]}, {x.shape[2]}] do not match the "
                             f"accumulated [L, H] = {list(self._mean.shape)}")
        if x.shape[0] == 0:
            return self
        valid = ~torch.isnan(x)
        n_b = valid.sum(0).double()
        xv = torch.where(valid, x, torch.zeros_like(x))
        mean_b = xv.sum(0) / n_b.clamp_min(1)
        m2_b = (torch.where(valid, x - mean_b, torch.zeros_like(x)) ** 2).sum(0)
        self._merge(n_b, mean_b, m2_b)
        self.images += int(x.shape[0])
        return self

    def _merge(self, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if self._mean is None:
            self.count, self._mean, self._m2 = n_b.clone(), mean_b.clone(), m2_b.clone()
            return
        assert self.count is not None and self._m2 is not None
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        safe = n.clamp_min(1)
        self._mean = self._mean + delta * n_b / safe
        self._m2 = self._m2 + m2_b + delta ** 2 * n_a * n_b / safe
        self.count = n

    def merge(self, other: "HeadStatistics") -> "HeadStatistics":
        """Fold another accumulator (e.g. from another worker) into this one; returns self."""
        if other._mean is None:
            self.failed += other.failed
            return self
        if self._mean is not None and other._mean.shape != self._mean.shape:
            raise ValueError(f"cannot merge statistics of shape {list(other._mean.shape)} into "
                             f"{list(self._mean.shape)}")
        assert other.count is not None and other._m2 is not None
        self._merge(other.count, other._mean, other._m2)
        self.images += other.images
        self.failed += other.failed
        return self

    def __repr__(self) -> str:
        head = (f"HeadStatistics(  # {self.statistic} in {self.unit}, {self.images} images"
                f" ({self.failed} failed)")
        if self._mean is None:
            return head + ", nothing accumulated yet\n)"
        lmean, lstd = self.layer_summary()
        L, H = self._mean.shape
        lines = [head + f", [L, H] = [{L}, {H}]",
                 f"    layers={describe(self.layers)},"]
        if L <= 8:
            per = ", ".join(f"{layer}: {float(m):.3g}" for layer, m in zip(self.layers, lmean))
            lines.append(f"    mean over heads per layer: {per}")
        else:
            lines.append(f"    mean over heads per layer: {float(lmean[0]):.3g} (layer {self.layers[0]}) .. "
                         f"{float(lmean[-1]):.3g} (layer {self.layers[-1]})")
        shown = {k: v for k, v in self.params.items() if k in ("model", "family", "input_size", "patch_size",
                                                               "prefix_tokens")}
        lines.append(f"    params: {', '.join(f'{k}={describe(v)}' for k, v in shown.items())}")
        return "\n".join(lines) + "\n)"

    def _repr_html_(self) -> str:
        if self._mean is None:
            return f"<p>HeadStatistics ({self.statistic}): nothing accumulated yet</p>"
        mean = self.mean
        lmean, lstd = self.layer_summary()
        H = mean.shape[1]
        rows = [[str(layer), f"{float(lmean[i]):.3g} ± {float(lstd[i]):.2g}"]
                + [f"{float(v):.3g}" for v in mean[i]] for i, layer in enumerate(self.layers)]
        return html_table(f"HeadStatistics: {self.statistic} ({self.unit}), mean over {self.images} images",
                          ["layer", "all heads (mean ± std)"] + [f"head {h}" for h in range(H)], rows, self.params)

    def _require(self) -> None:
        if self._mean is None:
            raise ValueError("no values accumulated yet: call update() with at least one ok image")

    @property
    def mean(self) -> torch.Tensor:
        """``[L, H]`` float64 mean over images (NaN where nothing was counted)."""
        self._require()
        assert self.count is not None and self._mean is not None
        return torch.where(self.count > 0, self._mean, torch.full_like(self._mean, float("nan")))

    def std(self, ddof: int = 0) -> torch.Tensor:
        """``[L, H]`` float64 standard deviation over images, ``sqrt(M2 / (n - ddof))``.

        ``ddof=0`` (default) is the population std, as ``numpy.std``; NaN where ``n <= ddof``.
        """
        self._require()
        assert self.count is not None and self._m2 is not None
        denom = self.count - ddof
        return torch.where(denom > 0, torch.sqrt(self._m2 / denom.clamp_min(1)),
                           torch.full_like(self._m2, float("nan")))

    def layer_summary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer, mean and (population) std over all heads and images pooled: ``([L], [L])``.

        Pools the per-head accumulators exactly (law of total variance), NaN heads skipped.
        """
        self._require()
        assert self.count is not None and self._mean is not None and self._m2 is not None
        n = self.count.sum(1)
        mean = torch.nansum(self._mean * self.count, 1) / n.clamp_min(1)
        dev = torch.where(self.count > 0, self._mean - mean[:, None], torch.zeros_like(self._mean))
        m2 = (self._m2 + self.count * dev ** 2).sum(1)
        nan = torch.full_like(mean, float("nan"))
        return torch.where(n > 0, mean, nan), torch.where(n > 0, torch.sqrt(m2 / n.clamp_min(1)), nan)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: per-layer and per-head mean and std, counts and parameters."""
        self._require()
        mean, std = self.mean, self.std()
        lmean, lstd = self.layer_summary()

        def clean(t: torch.Tensor) -> list:
            return [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in t.tolist()]

        return {
            "statistic": self.statistic, "unit": self.unit,
            "images": {"ok": self.images, "failed": self.failed},
            "params": self.params,
            "layers": [
                {"layer": layer,
                 "mean": None if math.isnan(lmean[i]) else round(float(lmean[i]), 6),
                 "std": None if math.isnan(lstd[i]) else round(float(lstd[i]), 6),
                 "heads": {"mean": m, "std": s}}
                for i, (layer, m, s) in enumerate(zip(self.layers, clean(mean), clean(std)))
            ],
        }


@renamed(on_batch="progress")
def head_statistics(model: nn.Module, images: Any, *, statistics: Sequence[str] = ("distance", "entropy"),
                    layers: Sequence[int] | int | None = None, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> dict[str, HeadStatistics]:
    """Run a model over a dataset and aggregate per-head statistics (mean and std over images).

    Each batch is captured once (``rows="all"``, only the chosen layers) and reduced to
    ``[B, L, H]`` by :func:`mean_attention_distance` / :func:`attention_entropy` before the
    next; nothing per image is kept, so memory does not grow with the dataset.

    Example::

        stats = vitlens.head_statistics(model, x)["distance"]
        stats.mean, stats.std()          # [L, H] pixels

    Args:
        model: a supported timm model in eval mode.
        images: a ``[N, 3, H, W]`` tensor (split into ``batch_size`` chunks), an iterable of
            such tensors, or an iterable of ``ImageBatch`` from :func:`vitlens.data.image_batches`
            (rows with ``ok=False`` are skipped and counted as failed).
        statistics: names in :data:`STATISTICS` (``"distance"``, ``"entropy"``).
        layers: layer indices to record (negative from the end); None = all.
        batch_size: split size for a tensor input.
        progress: called with the number of images done after each batch (e.g. a
            progress bar's ``update``; ``on_batch=`` is the deprecated name).

    Returns:
        name -> :class:`HeadStatistics`, each with ``params`` naming the model, layers,
        input size, patch size and prefix tokens that made it.
    """
    from ..capture import capture

    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        raise ValueError(f"unknown statistics {unknown or list(statistics)}; choose from {list(STATISTICS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    out = {s: HeadStatistics(statistic=s, unit=STATISTICS[s][1]) for s in statistics}
    device = model_device(model)
    if isinstance(images, torch.Tensor) and images.dim() == 3:     # one image
        images = images[None]
    for batch in as_batches(images, None, batch_size):    # failed items are left out and counted
        for acc in out.values():
            acc.failed += batch.skipped
        if batch.images.shape[0]:
            with torch.no_grad(), capture(model, layers, rows="all") as cache:
                model(batch.images.to(device))
            for name, acc in out.items():
                values = _FUNCTIONS[name](cache, None)
                if not acc.layers:
                    acc.layers = list(cache.layers)
                    acc.params = _params(model, cache)
                acc.update(values)
            del cache
        if progress is not None:
            progress(int(batch.images.shape[0]) + batch.skipped)
    return out


def _params(model: nn.Module, cache: AttentionCache) -> dict[str, Any]:
    layout = cache.layout
    assert layout is not None
    p: dict[str, Any] = {
        "model": cache.model_name, "family": cache.family, "layers": list(cache.layers),
        "heads": list(cache.heads), "num_layers": cache.num_layers, "num_heads": cache.num_heads,
        "input_size": list(layout.input_size), "patch_size": list(layout.patch_size),
        "grid_size": list(layout.grid_size), "prefix_tokens": list(layout.prefix_names),
        "queries": "patch tokens", "keys": "patch tokens, renormalised",
    }
    if cache.windowed:
        p["windowed"] = True
    return p
