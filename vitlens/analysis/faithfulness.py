"""Faithfulness metrics for patch maps: do the patches a map calls important matter to the model?

Every metric ranks the ``N = gh * gw`` patches of each image by its map, perturbs the
image in that order, and integrates the model's response (``docs/faithfulness.md`` has
the formulas, references and how to read the numbers):

=================  ==============================================  ================  =========
metric             perturbation (order)                            y                 better
=================  ==============================================  ================  =========
``deletion``       replace patches by the baseline, most relevant  p(target)         lower
                   first, k = 0..N (Petsiuk et al. 2018)
``insertion``      start from the baseline image, restore patches  p(target)         higher
                   most relevant first, k = 0..N (Petsiuk 2018)
``positive``       replace 0, 10, ..., 90 % of patches, most       top-1 acc. x100   lower
                   relevant first (Chefer et al. 2021)
``negative``       same, least relevant first (Chefer 2021)        top-1 acc. x100   higher
``positive_drop``  ``positive`` with the patch tokens removed      top-1 acc. x100   lower
                   from the ViT's sequence instead of pixels
``negative_drop``  ``negative`` with tokens removed                top-1 acc. x100   higher
=================  ==============================================  ================  =========

Conventions shared by every metric:

- **Order and ties**: most relevant first is a *stable* sort of ``-score`` (ties: the
  lower row-major patch index first); least relevant first is a stable sort of
  ``+score`` (ties: also the lower index first).
- **Counts**: a fraction ``f`` of ``N`` patches is ``floor(f·N + 0.5)`` patches
  (:func:`vitlens.analysis.importance.count_for`).
- **AUC**: trapezoid rule over the x-axis *fraction of patches* (``k / N`` for
  deletion/insertion, ``f`` for the perturbation tests), so deletion/insertion AUCs lie
  in [0, 1] and the perturbation AUCs in [0, 90] (x runs 0..0.9, y in percent).
- **Patch cells**: map cell ``(r, c)`` covers input pixels ``[r·H/gh, (r+1)·H/gh) x
  [c·W/gw, (c+1)·W/gw)`` (the ViT's patches for a ViT map); H and W must be multiples of
  the map's grid.
- **Baselines** (the value a removed patch takes, in the model's *normalised* input
  space): ``"zero"`` (0, i.e. the dataset mean colour: what Chefer et al.'s code
  does), ``"mean"`` (the image's own per-channel mean), ``"blur"`` (the image blurred by
  a Gaussian of ``blur_sigma`` pixels, default half the patch size, reflect padding;
  RISE's insertion start). Defaults follow the papers: deletion, positive and negative
  ``"zero"``; insertion ``"blur"``.

References:
    Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
    Models", BMVC 2018, https://arxiv.org/abs/1806.07421 (deletion and insertion).
    Chefer, Gur, Wolf, "Transformer Interpretability Beyond Attention Visualization",
    CVPR 2021, https://arxiv.org/abs/2012.09838 (positive and negative perturbation).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._util import as_batches, describe, html_table, jsonable as _jsonable, model_device as _model_device, renamed
from ..capture import logits_of
from ..errors import VitlensError
from .importance import check_token_drop_model, count_for, forward_kept

__all__ = ["evaluate", "FaithfulnessResult", "Curve", "METRICS", "PIXEL_METRICS", "TOKEN_DROP_METRICS",
           "BASELINES", "DEFAULT_BASELINES", "PERTURBATION_FRACTIONS", "LOWER_IS_BETTER",
           "deletion_curve", "insertion_curve", "perturbation_curve", "token_drop_curve", "trapezoid",
           "removal_order", "baseline_image", "gaussian_blur", "cell_mask", "CurveBatch", "MapSource"]

#: Metrics that perturb pixels (any model whose map grid divides the input).
PIXEL_METRICS: tuple[str, ...] = ("deletion", "insertion", "positive", "negative")
#: Metrics that remove tokens from a ViT's sequence (timm VisionTransformer only).
TOKEN_DROP_METRICS: tuple[str, ...] = ("positive_drop", "negative_drop")
#: Every metric :func:`evaluate` knows.
METRICS: tuple[str, ...] = PIXEL_METRICS + TOKEN_DROP_METRICS
#: Replacement values for removed patches.
BASELINES: tuple[str, ...] = ("blur", "mean", "zero")
#: Baseline per pixel metric when ``baseline=None`` (the papers' choices).
DEFAULT_BASELINES: dict[str, str] = {"deletion": "zero", "insertion": "blur", "positive": "zero", "negative": "zero"}
#: Fractions of patches removed in the perturbation tests: 0, 0.1, ..., 0.9 (Chefer et al. 2021).
PERTURBATION_FRACTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
#: Which direction is better, per metric.
LOWER_IS_BETTER: dict[str, bool] = {"deletion": True, "insertion": False, "positive": True, "negative": False,
                                    "positive_drop": True, "negative_drop": False}
_Y_LABEL = {"deletion": "p(target)", "insertion": "p(target)"}


# ------------------------------------------------------------------------ building blocks
def removal_order(scores: torch.Tensor, most_relevant_first: bool = True) -> torch.Tensor:
    """``[B, N]`` patch indices in perturbation order.

    Most relevant first: stable argsort of ``-scores``; least relevant first: stable
    argsort of ``scores``. Ties go to the lower row-major patch index in both.

    Args:
        scores: ``[B, N]`` (or ``[B, gh, gw]``) finite scores, higher = more relevant.
        most_relevant_first: the order of deletion/insertion/positive (True) or negative (False).
    """
    flat = scores.reshape(scores.shape[0], -1).float()
    return torch.argsort(-flat if most_relevant_first else flat, dim=-1, stable=True)


def cell_mask(order: torch.Tensor, k: int, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``[B, 1, H, W]`` bool: True on the pixels of the first ``k`` patches of ``order``.

    Args:
        order: ``[B, N]`` patch indices (row-major on ``grid``).
        k: how many patches, ``0 <= k <= N``.
        grid: ``(gh, gw)``.
        size: ``(H, W)`` input pixels, multiples of ``grid``.
    """
    (gh, gw), (h, w) = grid, size
    sel = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    if k > 0:
        sel.scatter_(1, order[:, :k], True)
    sel = sel.reshape(-1, 1, gh, gw)
    return sel.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel, radius ``ceil(3·sigma)`` (capped below the image size), reflect padding.

    Args:
        images: ``[B, C, H, W]``.
        sigma: standard deviation in pixels, > 0.
    """
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be > 0 pixels, got {sigma}")
    h, w = images.shape[-2:]
    r = max(1, min(int(math.ceil(3 * sigma)), h - 1, w - 1))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=images.device)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def baseline_image(images: torch.Tensor, kind: str, cell: tuple[int, int] = (16, 16),
                   blur_sigma: float | None = None) -> torch.Tensor:
    """The image a removed patch is taken from, ``[B, C, H, W]`` in normalised input space.

    Args:
        images: ``[B, C, H, W]`` preprocessed (normalised) batch.
        kind: ``"zero"`` (zeros: the dataset mean colour), ``"mean"`` (each image's
            per-channel mean), ``"blur"`` (:func:`gaussian_blur` of the image).
        cell: patch size in pixels; the default blur sigma is ``max(cell) / 2``.
        blur_sigma: blur standard deviation in pixels (``"blur"`` only).
    """
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).clone()
    if kind == "blur":
        return gaussian_blur(images, blur_sigma if blur_sigma is not None else max(cell) / 2.0)
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {kind!r}")


def trapezoid(x: torch.Tensor | Sequence[float], y: torch.Tensor) -> torch.Tensor:
    """Area under ``y`` over ``x`` by the trapezoid rule, along the last dimension.

    ``AUC = Σ_j (x_{j+1} - x_j) · (y_j + y_{j+1}) / 2``.
    """
    x = torch.as_tensor(x, dtype=torch.float64, device=y.device)
    y = y.double()
    return ((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2).sum(-1)


def _grid_of(scores: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    if scores.dim() != 3:
        raise ValueError(f"maps must be [B, gh, gw], got shape {tuple(scores.shape)}")
    gh, gw = int(scores.shape[1]), int(scores.shape[2])
    if size[0] % gh or size[1] % gw:
        raise ValueError(f"the map's {gh}x{gw} grid does not divide the {size[0]}x{size[1]} input; pixel "
                         f"metrics perturb whole map cells, so the input size must be a multiple of the grid")
    if not torch.isfinite(scores).all():
        raise ValueError("maps hold NaN or infinite values; every patch needs a finite score")
    return gh, gw


@torch.no_grad()
def _forward_steps(model: nn.Module, make: Callable[[int], torch.Tensor], n_steps: int, batch: int,
                   readout: Callable[[torch.Tensor, int], torch.Tensor], forward_batch: int) -> torch.Tensor:
    """Run the model on ``make(j)`` for every step j, several steps per forward; ``[B, n_steps]``."""
    per = max(1, forward_batch // max(batch, 1))
    out = []
    for s in range(0, n_steps, per):
        js = list(range(s, min(s + per, n_steps)))
        logits = logits_of(model, model(torch.cat([make(j) for j in js])))
        for i, _ in enumerate(js):
            out.append(readout(logits[i * batch:(i + 1) * batch], i))
    return torch.stack(out, dim=1)


def _step_counts(n: int, steps: int | None) -> list[int]:
    s = n if steps is None else int(steps)
    if isinstance(steps, bool) or not 1 <= s <= n:
        raise ValueError(f"steps must be between 1 and the number of patches ({n}), got {steps!r}")
    return [int(math.floor(j * n / s + 0.5 + 1e-9)) for j in range(s + 1)]


class CurveBatch(NamedTuple):
    """Curves of one batch: shared x-axis and one y row per image."""

    x: torch.Tensor   #: ``[S]`` fraction of patches perturbed
    y: torch.Tensor   #: ``[B, S]``


def _target_prob(target: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    return lambda logits, _i: logits.float().softmax(-1).gather(1, target.view(-1, 1)).squeeze(1)


def _correct(labels: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
    return lambda logits, _i: (logits.argmax(-1) == labels).float() * 100.0


def deletion_curve(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor, *,
                   baseline: str = "zero", steps: int | None = None, blur_sigma: float | None = None,
                   forward_batch: int = 512) -> CurveBatch:
    """Deletion curve (Petsiuk et al. 2018): ``p(target)`` as the most relevant patches are replaced.

    With ``S = steps`` (default ``N``, one patch per step) and ``k_j = floor(j·N/S + 0.5)``
    for ``j = 0..S``, step j replaces the first ``k_j`` patches of :func:`removal_order`
    (most relevant first) by the ``baseline`` image and records the softmax probability
    of the target class. ``x_j = k_j / N``; the metric is :func:`trapezoid` (x, y), lower =
    more faithful.

    Args:
        model: the classifier (eval mode).
        images: ``[B, 3, H, W]`` preprocessed batch.
        maps: ``[B, gh, gw]`` relevance (higher = more relevant).
        target: ``[B]`` class indices whose probability is tracked.
        baseline: ``"zero"`` | ``"mean"`` | ``"blur"`` (:func:`baseline_image`).
        steps: number of steps S (1..N).
        blur_sigma: Gaussian sigma in pixels for ``"blur"``.
        forward_batch: images per forward (several steps are batched together).
    """
    return _deletion_insertion(model, images, maps, target, baseline, steps, blur_sigma, forward_batch, insert=False)


def insertion_curve(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor, *,
                    baseline: str = "blur", steps: int | None = None, blur_sigma: float | None = None,
                    forward_batch: int = 512) -> CurveBatch:
    """Insertion curve (Petsiuk et al. 2018): ``p(target)`` as the most relevant patches are restored.

    Starts from the ``baseline`` image (step 0, nothing restored) and at step j puts
    back the original pixels of the first ``k_j = floor(j·N/S + 0.5)`` patches of
    :func:`removal_order` (most relevant first); ``x_j = k_j / N``. The metric is
    :func:`trapezoid` (x, y), higher = more faithful. Arguments as :func:`deletion_curve`.
    """
    return _deletion_insertion(model, images, maps, target, baseline, steps, blur_sigma, forward_batch, insert=True)


def _deletion_insertion(model, images, maps, target, baseline, steps, blur_sigma, forward_batch, insert):
    size = (int(images.shape[-2]), int(images.shape[-1]))
    grid = _grid_of(maps, size)
    n = grid[0] * grid[1]
    counts = _step_counts(n, steps)
    order = removal_order(maps, True)
    base = baseline_image(images, baseline, (size[0] // grid[0], size[1] // grid[1]), blur_sigma)
    target = target.to(images.device).long()

    def make(j: int) -> torch.Tensor:
        m = cell_mask(order, counts[j], grid, size)
        return torch.where(m, images, base) if insert else torch.where(m, base, images)

    y = _forward_steps(model, make, len(counts), images.shape[0], _target_prob(target), forward_batch)
    return CurveBatch(torch.tensor([k / n for k in counts], dtype=torch.float64), y)


def perturbation_curve(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, *,
                       positive: bool = True, baseline: str = "zero",
                       fractions: Sequence[float] = PERTURBATION_FRACTIONS, blur_sigma: float | None = None,
                       forward_batch: int = 512) -> CurveBatch:
    """Positive / negative perturbation test (Chefer et al. 2021, Sec. 4.2), pixels replaced.

    For each fraction ``f`` (default 0, 0.1, ..., 0.9) the first ``floor(f·N + 0.5)``
    patches of :func:`removal_order` -- most relevant first for ``positive``, least
    relevant first for negative -- are replaced by the ``baseline`` image, and y is
    ``100 · [argmax logits == label]`` (top-1 accuracy in percent once averaged over
    images). ``x = f``; the metric is :func:`trapezoid` (x, y), at most 90. Positive:
    lower = more faithful; negative: higher = more faithful.

    Args:
        labels: ``[B]`` the classes counted as correct.
        positive: most relevant first (True) or least relevant first (False).
        fractions: ascending fractions in ``[0, 1]``.
        Other arguments as :func:`deletion_curve`.
    """
    size = (int(images.shape[-2]), int(images.shape[-1]))
    grid = _grid_of(maps, size)
    n = grid[0] * grid[1]
    fr = _fractions(fractions)
    counts = [count_for(f, n) for f in fr]
    order = removal_order(maps, positive)
    base = baseline_image(images, baseline, (size[0] // grid[0], size[1] // grid[1]), blur_sigma)
    labels = labels.to(images.device).long()

    def make(j: int) -> torch.Tensor:
        return torch.where(cell_mask(order, counts[j], grid, size), base, images)

    y = _forward_steps(model, make, len(counts), images.shape[0], _correct(labels), forward_batch)
    return CurveBatch(torch.tensor(fr, dtype=torch.float64), y)


@torch.no_grad()
def token_drop_curve(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, *,
                     positive: bool = True, fractions: Sequence[float] = PERTURBATION_FRACTIONS) -> CurveBatch:
    """The perturbation test with patch tokens removed from the ViT's sequence (token drop).

    As :func:`perturbation_curve`, but the first ``floor(f·N + 0.5)`` patches of
    :func:`removal_order` are dropped from the token sequence after the position
    embeddings are added (:func:`vitlens.analysis.importance.forward_kept`; the rest
    keep their order and positions, prefix tokens stay), instead of being overwritten
    in pixel space. No baseline value is involved, so the test does not feed the model
    out-of-distribution pixels (cf. Hooker et al. 2019, https://arxiv.org/abs/1806.10758).
    timm VisionTransformer models only.
    """
    check_token_drop_model(model)
    flat = maps.reshape(maps.shape[0], -1)
    if not torch.isfinite(flat).all():
        raise ValueError("maps hold NaN or infinite values; every patch needs a finite score")
    n = flat.shape[1]
    fr = _fractions(fractions)
    order = removal_order(flat, positive)
    labels = labels.to(images.device).long()
    ys = []
    for f in fr:
        k = min(count_for(f, n), n - 1)          # at least one patch token stays
        keep = order[:, k:].sort(dim=-1).values
        ys.append((forward_kept(model, images, keep).argmax(-1) == labels).float() * 100.0)
    return CurveBatch(torch.tensor(fr, dtype=torch.float64), torch.stack(ys, dim=1))


def _fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(not 0 <= f <= 1 for f in fr) or fr != sorted(fr):
        raise ValueError(f"fractions must be at least two ascending values in [0, 1], got {list(fractions)}")
    return fr


# ------------------------------------------------------------------------ results
@dataclass
class Curve:
    """A metric's mean curve over the evaluated images.

    Attributes:
        method: map method.
        metric: metric name.
        x: fraction of patches perturbed (removed, or inserted for insertion).
        y: mean over images of p(target) (deletion/insertion) or top-1 accuracy in percent.
    """

    method: str
    metric: str
    x: list[float]
    y: list[float]

    def __repr__(self) -> str:
        return (f"Curve(method={self.method!r}, metric={self.metric!r}, {len(self.x)} points, "
                f"x={self.x[0]:.3g}..{self.x[-1]:.3g}, auc={self.auc:.4g})" if self.x else
                f"Curve(method={self.method!r}, metric={self.metric!r}, empty)")

    @property
    def params(self) -> dict[str, Any]:
        return {"method": self.method, "metric": self.metric}

    @property
    def xlabel(self) -> str:
        if self.metric == "insertion":
            return "fraction of patches inserted"
        if self.metric.endswith("_drop"):
            return "fraction of patch tokens dropped"
        return "fraction of patches removed"

    @property
    def ylabel(self) -> str:
        return "p(target class)" if self.metric in _Y_LABEL else "top-1 accuracy (%)"

    @property
    def auc(self) -> float:
        return float(trapezoid(self.x, torch.tensor(self.y, dtype=torch.float64)))


class FaithfulnessResult(Mapping):
    """``result[method][metric]`` -> AUC (mean over images), with curves and the parameters.

    Attributes:
        values: method -> metric -> AUC averaged over images.
        curves: method -> metric -> :class:`Curve` (mean curve; its AUC equals the value).
        per_image: method -> metric -> ``[n_images]`` float64 AUC of each image, input order.
        n_images: images evaluated; n_skipped: inputs that failed to decode (skipped).
        params: every parameter that made the result (target_source, baselines, steps, ...).
    """

    def __init__(self, values: dict[str, dict[str, float]], curves: dict[str, dict[str, Curve]],
                 per_image: dict[str, dict[str, torch.Tensor]], n_images: int, n_skipped: int,
                 params: dict[str, Any]) -> None:
        self.values, self.curves, self.per_image = values, curves, per_image
        self.n_images, self.n_skipped, self.params = n_images, n_skipped, params

    def __getitem__(self, method: str) -> dict[str, float]:
        return self.values[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        metrics = self.metrics or sorted({k for v in self.values.values() for k in v})
        lines = [f"FaithfulnessResult(  # {len(self.values)} methods x {len(metrics)} metrics, AUC over "
                 f"{self.n_images} images ({self.n_skipped} skipped), "
                 f"target_source={self.params.get('target_source')!r}"]
        for method, vals in self.values.items():
            cells = ", ".join(f"{m}={vals[m]:.4g}" for m in metrics if m in vals)
            lines.append(f"    {method}: {cells}")
        shown = {k: v for k, v in self.params.items() if k not in ("methods", "metrics", "options", "fractions")}
        lines.append(f"    params: {', '.join(f'{k}={describe(v)}' for k, v in shown.items())}")
        return "\n".join(lines) + "\n)"

    def _repr_html_(self) -> str:
        metrics = self.metrics or sorted({k for v in self.values.values() for k in v})
        rows = []
        for method, vals in self.values.items():
            rows.append([method] + [f"{vals[m]:.4g} ± {self.sem(method, m):.2g}" for m in metrics])
        return html_table(f"FaithfulnessResult: AUC (mean ± s.e.m.) over {self.n_images} images",
                          ["method"] + [f"{m} {'↓' if LOWER_IS_BETTER[m] else '↑'}" for m in metrics], rows,
                          self.params)

    @property
    def methods(self) -> list[str]:
        return list(self.values)

    @property
    def metrics(self) -> list[str]:
        return list(self.params.get("metrics", []))

    def sem(self, method: str, metric: str) -> float:
        """Standard error of the mean AUC over images (sample std / sqrt(n))."""
        v = self.per_image[method][metric]
        return float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: values, standard errors, mean curves, counts and parameters."""
        return {
            "values": {m: dict(v) for m, v in self.values.items()},
            "sem": {m: {k: self.sem(m, k) for k in v} for m, v in self.values.items()},
            "curves": {m: {k: {"x": c.x, "y": c.y} for k, c in v.items()} for m, v in self.curves.items()},
            "n_images": self.n_images, "n_skipped": self.n_skipped, "params": _jsonable(self.params),
        }

    def table(self, sem: bool = True) -> str:
        """Markdown table: one row per method, one column per metric (arrow = better direction)."""
        metrics = self.metrics or sorted({k for v in self.values.values() for k in v})
        head = "| method | " + " | ".join(f"{m} {'↓' if LOWER_IS_BETTER[m] else '↑'}" for m in metrics) + " |"
        rows = [head, "|---|" + "---:|" * len(metrics)]
        for method, vals in self.values.items():
            cells = []
            for m in metrics:
                digits = 3 if m in ("deletion", "insertion") else 2
                cell = f"{vals[m]:.{digits}f}"
                if sem:
                    cell += f" ± {self.sem(method, m):.{digits}f}"
                cells.append(cell)
            rows.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(rows)


# ------------------------------------------------------------------------ evaluate
def _check_names(given: Sequence[str] | str, known: Sequence[str], what: str) -> list[str]:
    import difflib

    items = [given] if isinstance(given, str) else list(given)
    if not items:
        raise ValueError(f"no {what} given; choose from {', '.join(known)}")
    for it in items:
        if it not in known:
            close = difflib.get_close_matches(str(it), list(known), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {what[:-1]} {it!r}{hint}; known {what}: {', '.join(known)}")
    return list(dict.fromkeys(items))


def default_metrics(model: nn.Module) -> list[str]:
    """Every metric that applies: the pixel metrics, plus the token-drop ones for timm ViTs."""
    try:
        check_token_drop_model(model)
    except VitlensError:
        return list(PIXEL_METRICS)
    return list(METRICS)


#: What :func:`evaluate` accepts per method: a registered name, precomputed maps, or a map function.
MapSource = str | torch.Tensor | Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _map_sources(methods: Any) -> dict[str, MapSource]:
    """``methods`` as name -> source: names (registered methods) or a mapping to tensors / callables / names."""
    from .registry import get_method

    if isinstance(methods, Mapping):
        items = list(methods.items())
    else:
        items = [(m, m) for m in ([methods] if isinstance(methods, str) else list(methods))]
    if not items:
        raise ValueError("no methods given; pass e.g. methods=['rollout', 'random'] or {'mine': maps}")
    out: dict[str, MapSource] = {}
    for name, src in items:
        if not isinstance(name, str):
            raise TypeError(f"method names must be strings, got {type(name).__name__} {name!r}")
        if isinstance(src, str):
            get_method(src)                                # unknown name: ValueError with a close match
        elif isinstance(src, torch.Tensor):
            if src.dim() != 3:
                raise ValueError(f"maps for {name!r} must be a tensor [N, gh, gw] (one map per input image), "
                                 f"got shape {tuple(src.shape)}")
        elif not callable(src):
            raise TypeError(f"methods[{name!r}] must be a registered method name, a tensor [N, gh, gw] of maps, or "
                            f"a callable (model, images, target) -> maps; got {type(src).__name__}")
        out[name] = src
    return out


@renamed(target="target_source")
def evaluate(model: nn.Module, images: Any, labels: torch.Tensor | Sequence[int] | None = None,
             methods: Sequence[str] | str | Mapping[str, MapSource] = ("rollout", "random"),
             metrics: Sequence[str] | str | None = None, *,
             target_source: str = "predicted", baseline: str | None = None, steps: int | None = None,
             fractions: Sequence[float] = PERTURBATION_FRACTIONS, blur_sigma: float | None = None,
             batch_size: int = 64, limit: int | None = None, seed: int = 0,
             options: Mapping[str, Mapping[str, Any]] | None = None, forward_batch: int = 512,
             progress: Callable[[int], None] | None = None) -> FaithfulnessResult:
    """Faithfulness of several map methods on many images: ``result[method][metric]`` -> AUC.

    For every batch: one clean forward gives the prediction; each method's maps come
    from :func:`vitlens.explain` (the class ``target_source`` names, ``options[method]``), from a tensor
    of precomputed maps, or from a callable; each metric's per-image curve and AUC are
    computed (see the module docstring and the curve functions
    :func:`deletion_curve`, :func:`insertion_curve`, :func:`perturbation_curve`,
    :func:`token_drop_curve` for the exact definitions) and averaged over all images.

    Maps of any origin are scored the same way, e.g. another library's next to vitlens'::

        evaluate(model, x, labels, methods={"chefer": "chefer", "theirs": their_maps,
                                            "fn": lambda model, images, target: my_maps(images)})

    Args:
        model: a supported model in eval mode.
        images: a tensor ``[N, 3, H, W]`` (split into ``batch_size`` chunks) or an
            iterable of batches: tensors, ``(images, labels)`` pairs or
            :class:`vitlens.data.ImageBatch` (failed items are skipped and counted).
        labels: ``[N]`` true classes, or None. They define "correct" in the perturbation
            tests; without labels the model's prediction on the clean image is used
            (the tests then measure agreement with the unperturbed prediction).
        methods: :func:`vitlens.explain` method names, e.g. ``["rollout", "random"]``, or a
            mapping from the name to report to: a method name; a tensor ``[N, gh, gw]``
            with one map per input image in input order (row i for input i, failed
            inputs included, like ``labels``); or a callable
            ``(model, images [b, 3, H, W], target [b]) -> maps [b, gh, gw]`` called on
            each batch. The grid must divide the input size (any grid, not only the
            ViT's).
        metrics: names from :data:`METRICS`; None = every metric that applies
            (token-drop only for timm VisionTransformer models).
        target_source: where each image's explained class comes from: ``"predicted"``
            (the class the model predicts on the clean image) or ``"label"`` (its true
            label). That class is the ``target`` of every map and the one whose
            probability deletion and insertion track. (``target=`` is the deprecated name
            of this argument; ``target`` elsewhere is a class index.)
        baseline: one of :data:`BASELINES` for every pixel metric, or None for
            :data:`DEFAULT_BASELINES` (deletion/positive/negative ``"zero"``, insertion ``"blur"``).
        steps: deletion/insertion steps S (default N: one patch per step).
        fractions: fractions removed in the perturbation tests (default 0, 0.1, ..., 0.9).
        blur_sigma: sigma in pixels of the ``"blur"`` baseline (default half a patch).
        batch_size: images per batch when ``images`` is a tensor.
        limit: evaluate at most this many images (the first ones).
        seed: the ``"random"`` method's maps use ``seed * 1_000_003 + index of the
            batch's first image`` unless ``options["random"]["seed"]`` is given, so the
            random baseline is deterministic for the same inputs and batch size.
        options: per-method options for :func:`vitlens.explain`, e.g. ``{"ig": {"n_steps": 16}}``
            (only for methods given by name).
        forward_batch: images per forward pass inside the metrics.
        progress: called with the number of inputs done after each batch.

    Returns:
        :class:`FaithfulnessResult` (a mapping method -> metric -> AUC) with the curves.
    """
    from .explain import explain  # one place for every map method

    sources = _map_sources(methods)
    methods = list(sources)
    metrics = default_metrics(model) if metrics is None else _check_names(metrics, METRICS, "metrics")
    if any(m in TOKEN_DROP_METRICS for m in metrics):
        check_token_drop_model(model)
    if target_source not in ("predicted", "label"):
        raise ValueError(f"`target_source` must be 'predicted' or 'label', got {target_source!r}")
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)} (or None for the papers' defaults), "
                         f"got {baseline!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of images, got {limit!r}")
    options = {k: dict(v) for k, v in (options or {}).items()}
    unknown = sorted(set(options) - {m for m, src in sources.items() if isinstance(src, str)})
    if unknown:
        raise ValueError(f"options given for method(s) {', '.join(unknown)} that are not evaluated by name "
                         f"(methods by name: {', '.join(m for m, s in sources.items() if isinstance(s, str))})")
    fr = _fractions(fractions)
    baselines = {m: (baseline or DEFAULT_BASELINES[m]) for m in PIXEL_METRICS}
    device = _model_device(model)

    sums: dict[str, dict[str, torch.Tensor]] = {m: {} for m in methods}
    xs: dict[str, torch.Tensor] = {}
    per_image: dict[str, dict[str, list[torch.Tensor]]] = {m: {k: [] for k in metrics} for m in methods}
    n_images = n_skipped = 0
    refs: list[bool] = []   # per batch: were labels the reference?
    for batch in as_batches(images, labels, batch_size):
        x, y = batch.images, batch.labels
        if limit is not None and n_images + x.shape[0] > limit:
            x = x[:limit - n_images]
            y = None if y is None else y[:limit - n_images]
        n_skipped += batch.skipped
        if x.shape[0] == 0:
            if progress is not None and batch.skipped:
                progress(batch.skipped)
            if limit is not None and n_images >= limit:
                break
            continue
        x = x.to(device)
        with torch.no_grad():
            pred = logits_of(model, model(x)).argmax(-1)
        if target_source == "label" and y is None:
            raise ValueError("`target_source=label` needs labels; pass `labels` or use `target_source=predicted`")
        refs.append(y is not None)
        ref = pred if y is None else y.to(device)
        tgt = ref if target_source == "label" else pred
        for method in methods:
            src = sources[method]
            if isinstance(src, str):
                opts = dict(options.get(method, {}))
                if src == "random":
                    opts.setdefault("seed", int(seed) * 1_000_003 + int(batch.index[0]) if len(batch.index) else 0)
                maps = explain(model, x, method=src, target=tgt, **opts)
            elif isinstance(src, torch.Tensor):
                idx = batch.index.to(torch.long)
                if len(idx) and int(idx.max()) >= src.shape[0]:
                    raise ValueError(f"maps for {method!r} hold {src.shape[0]} maps, but input image "
                                     f"{int(idx.max())} is evaluated; give one map per input image")
                maps = src[idx.to(src.device)]
            else:
                maps = src(model, x, tgt)
                if not isinstance(maps, torch.Tensor):
                    raise TypeError(f"the map function for {method!r} returned {type(maps).__name__}, "
                                    f"expected a tensor [b, gh, gw]")
            maps = maps.detach().float().to(device)
            if maps.dim() != 3 or maps.shape[0] != x.shape[0]:
                raise ValueError(f"method {method!r} gave maps of shape {tuple(maps.shape)}; the metrics need "
                                 f"one [gh, gw] map per image, [{x.shape[0]}, gh, gw] for this batch "
                                 f"(for 'cls', use a head fusion, not head=None)")
            for metric in metrics:
                cb = _metric_curve(model, x, maps, metric, tgt, ref, baselines, steps, fr, blur_sigma, forward_batch)
                xs[metric] = cb.x
                s = cb.y.double().sum(0).cpu()
                sums[method][metric] = s if metric not in sums[method] else sums[method][metric] + s
                per_image[method][metric].append(trapezoid(cb.x, cb.y).cpu())
        n_images += x.shape[0]
        if progress is not None:
            progress(x.shape[0] + batch.skipped)
        if limit is not None and n_images >= limit:
            break
    if n_images == 0:
        raise VitlensError("no image could be evaluated (the input is empty or every image failed to decode)")

    values: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, Curve]] = {}
    per: dict[str, dict[str, torch.Tensor]] = {}
    for method in methods:
        per[method] = {k: torch.cat(v) for k, v in per_image[method].items()}
        values[method] = {k: float(per[method][k].mean()) for k in metrics}
        curves[method] = {k: Curve(method, k, xs[k].tolist(), (sums[method][k] / n_images).tolist())
                          for k in metrics}
    params = {"methods": methods, "metrics": metrics, "target_source": target_source,
              "reference": "labels" if all(refs) else ("prediction" if not any(refs) else "mixed"),
              "baselines": {m: baselines[m] for m in metrics if m in baselines}, "steps": steps,
              "fractions": fr, "blur_sigma": blur_sigma, "seed": seed, "options": options, "limit": limit}
    return FaithfulnessResult(values, curves, per, n_images, n_skipped, params)


def _metric_curve(model, x, maps, metric, tgt, ref, baselines, steps, fr, blur_sigma, forward_batch) -> CurveBatch:
    if metric == "deletion":
        return deletion_curve(model, x, maps, tgt, baseline=baselines[metric], steps=steps, blur_sigma=blur_sigma,
                              forward_batch=forward_batch)
    if metric == "insertion":
        return insertion_curve(model, x, maps, tgt, baseline=baselines[metric], steps=steps, blur_sigma=blur_sigma,
                               forward_batch=forward_batch)
    if metric in ("positive", "negative"):
        return perturbation_curve(model, x, maps, ref, positive=metric == "positive", baseline=baselines[metric],
                                  fractions=fr, blur_sigma=blur_sigma, forward_batch=forward_batch)
    return token_drop_curve(model, x, maps, ref, positive=metric == "positive_drop", fractions=fr)
