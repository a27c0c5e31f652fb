"""Plots of the faithfulness curves (:func:`vitlens.evaluate`) and of the keep-ratio curve.

Matplotlib is imported lazily and figures are built with :class:`matplotlib.figure.Figure`
(never ``pyplot``); nothing is shown or saved here
(:func:`vitlens.export.figures.save_figure` writes a figure). Both functions read the
result objects only: they never run a model.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from vitlens.analysis.faithfulness import FaithfulnessResult
    from vitlens.analysis.importance import KeepRatioCurve

__all__ = ["faithfulness_curves", "keep_ratio_plot"]

_NCOLS = 3


def _new_figure(w: float, h: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _draw_metric(ax: "Axes", result: "FaithfulnessResult", metric: str) -> None:
    from vitlens.analysis.faithfulness import LOWER_IS_BETTER

    first = None
    for method in result.methods:
        c = result.curves[method][metric]
        first = first or c
        style = dict(color="0.5", linestyle="--") if method == "random" else {}
        ax.plot(c.x, c.y, marker=".", label=f"{method} ({result.values[method][metric]:.3g})", **style)
    assert first is not None
    arrow = "lower is better" if LOWER_IS_BETTER[metric] else "higher is better"
    ax.set_title(f"{metric} (AUC, {arrow})", fontsize="medium")
    ax.set_xlabel(first.xlabel)
    ax.set_ylabel(first.ylabel)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def faithfulness_curves(result: "FaithfulnessResult", metrics: str | Sequence[str] | None = None, *,
                        ax: "Axes | None" = None, title: str | None = None) -> "Figure":
    """Mean curve of each method, one panel per metric; the legend gives each AUC.

    Args:
        result: from :func:`vitlens.evaluate`.
        metrics: one metric name or several; default every metric in ``result``.
        ax: draw into these axes (only with a single metric); default a new figure.
        title: figure title.

    Returns:
        The :class:`matplotlib.figure.Figure`.
    """
    names = result.metrics if metrics is None else ([metrics] if isinstance(metrics, str) else list(metrics))
    if not names:
        raise ValueError("the result holds no metric to plot")
    for m in names:
        if not result.methods or m not in result.curves[result.methods[0]]:
            have = ", ".join(result.metrics)
            raise ValueError(f"metric {m!r} is not in this result (it has: {have})")
    if ax is not None:
        if len(names) != 1:
            raise ValueError(f"ax= draws one metric; got {len(names)} ({', '.join(names)}). Pass metrics='<name>'")
        _draw_metric(ax, result, names[0])
        fig = ax.figure
    else:
        ncols = min(_NCOLS, len(names))
        nrows = -(-len(names) // ncols)
        fig = _new_figure(4.2 * ncols, 3.4 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, m in enumerate(names):
            _draw_metric(axes[i // ncols][i % ncols], result, m)
        for j in range(len(names), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
    if title is None:
        title = f"faithfulness over {result.n_images} images"
    if title:
        fig.suptitle(title)
    return fig


def keep_ratio_plot(curve: "KeepRatioCurve", *, ax: "Axes | None" = None, title: str | None = None) -> "Figure":
    """Top-1 accuracy against the fraction of patch tokens kept, the method against random order.

    Args:
        curve: from :func:`vitlens.analysis.importance.keep_ratio_curve`.
        ax: draw into these axes; default a new figure.
        title: axes title.
    """
    if ax is None:
        fig = _new_figure(5.0, 3.6)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    for name, acc in curve.accuracy.items():
        style: dict[str, Any] = dict(color="0.5", linestyle="--") if name == "random" else {}
        ax.plot(curve.ratios, acc, marker="o", label=name, **style)
    ax.set_xlabel("fraction of patch tokens kept")
    ax.set_ylabel("top-1 accuracy (%)" if curve.reference == "labels" else "agreement with full-token prediction (%)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title if title is not None else f"keep-ratio curve, {curve.n_images} images", fontsize="medium")
    return fig
