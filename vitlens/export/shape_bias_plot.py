"""The shape-bias comparison plot in the style of Geirhos et al. (ICLR 2019), Fig. 4.

Categories are rows; the x axis is the fraction of shape decisions (shape bias), drawn as
in the paper with shape on the left (1) and texture on the right (0), and a second axis
on top giving the fraction of texture decisions. Each model gets one marker style: a
marker per category at that category's shape bias and a vertical line at its overall
shape bias. The human average, 0.96 (Geirhos et al. 2019,
https://arxiv.org/abs/1811.12231), is drawn as a labelled reference line.

Matplotlib is imported lazily and the figure is built with
:class:`matplotlib.figure.Figure` (never ``pyplot``); nothing is shown or saved here
(:func:`vitlens.export.figures.save_figure` writes it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from vitlens.analysis.shape_bias import HUMAN_SHAPE_BIAS, ShapeBiasResult

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["shape_bias_plot", "MARKERS"]

#: Marker styles, one per model, in order (then repeated).
MARKERS: tuple[str, ...] = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")


def _fields(result: ShapeBiasResult | Mapping[str, Any]) -> tuple[str, float | None, dict[str, float | None]]:
    """(label, overall shape bias, per-category) of a result or of its ``to_dict()``."""
    if isinstance(result, ShapeBiasResult):
        return result.model, result.shape_bias, dict(result.per_category)
    if isinstance(result, Mapping) and "per_category" in result and "shape_bias" in result:
        return str(result.get("model", "model")), result["shape_bias"], dict(result["per_category"])
    raise TypeError(f"expected ShapeBiasResult objects (or their to_dict()), got {type(result).__name__}")


def shape_bias_plot(results: ShapeBiasResult | Mapping[str, Any] | Sequence[ShapeBiasResult | Mapping[str, Any]],
                    *, labels: Sequence[str] | None = None, ax: "Axes | None" = None,
                    human: float | None = HUMAN_SHAPE_BIAS, title: str | None = None,
                    categories: Sequence[str] | None = None) -> "Figure":
    """Per-category and overall shape bias of one or more models, Geirhos et al. style.

    Args:
        results: one :class:`~vitlens.ShapeBiasResult` or several (or their
            ``to_dict()``, e.g. read back from ``vitlens shape-bias --json``).
        labels: legend label per result; default each result's ``model``.
        ax: draw into these axes (a second x axis is added on top); default a new figure.
        human: x position of the human reference line (default 0.96, Geirhos et al.
            2019); None leaves it out.
        title: axes title.
        categories: rows, top to bottom; default the union of the results' evaluated
            categories, sorted. Categories with no shape/texture decision for a model
            (``per_category`` None) get no marker for that model; a row no model has a
            decision for says so in grey.

    Returns:
        The :class:`matplotlib.figure.Figure` (not shown, not saved).

    Raises:
        TypeError: ``results`` holds something else.
        ValueError: no results, or ``labels`` of the wrong length.
    """
    from matplotlib.figure import Figure

    items = [results] if isinstance(results, (ShapeBiasResult, Mapping)) else list(results)
    if not items:
        raise ValueError("shape_bias_plot needs at least one result")
    data = [_fields(r) for r in items]
    if labels is None:
        names = [d[0] for d in data]
    else:
        names = [str(x) for x in labels]
        if len(names) != len(data):
            raise ValueError(f"got {len(names)} labels for {len(data)} results")
    if categories is None:
        rows = sorted({c for d in data for c in d[2]})
    else:
        rows = [str(c) for c in categories]
    n = max(len(rows), 1)

    own_figure = ax is None
    if ax is None:
        fig = Figure(figsize=(7.0, 2.2 + 0.36 * n), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ypos = {c: n - 1 - i for i, c in enumerate(rows)}  # first category at the top

    for i in range(n - 1):
        ax.axhline(i + 0.5, color="grey", linestyle=":", linewidth=0.6, alpha=0.5, zorder=0)
    if human is not None:
        ax.axvline(human, color="0.35", linestyle="--", linewidth=1.2, zorder=1,
                   label=f"humans (Geirhos et al. 2019): {human:.2f}")
        ax.text(human - 0.012, -0.45, f"humans {human:.2f}", rotation=90, ha="left", va="bottom",
                fontsize="small", color="0.35", zorder=1)

    colors = [f"C{i % 10}" for i in range(len(data))]
    for k, ((_, overall, per_cat), name) in enumerate(zip(data, names)):
        color, marker = colors[k], MARKERS[k % len(MARKERS)]
        xs = [per_cat[c] for c in rows if per_cat.get(c) is not None]
        ys = [ypos[c] for c in rows if per_cat.get(c) is not None]
        label = f"{name}: {overall:.2f}" if overall is not None else f"{name}: n/a"
        ax.scatter(xs, ys, marker=marker, s=55, color=color, edgecolors=(0.3, 0.3, 0.3, 0.5),
                   linewidths=0.5, zorder=3, clip_on=False, label=label)
        if overall is not None:
            ax.axvline(overall, color=color, linewidth=1.4, zorder=2)

    for c in rows:  # an empty row says why, rather than looking like a drawing error
        if all(d[2].get(c) is None for d in data):
            ax.text(0.5, ypos[c], "no shape or texture decision", ha="center", va="center",
                    fontsize="small", color="0.45", style="italic", zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    ax.set_xlim(1.0, 0.0)  # shape (1) on the left, texture (0) on the right, as in the paper
    ax.set_ylim(-0.5, n - 0.5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(rows)))
    ax.set_xticks([i / 10 for i in range(11)])
    ax.set_xlabel("Fraction of 'shape' decisions (shape bias)")
    ax.set_ylabel("Shape categories")
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda x: 1 - x))
    top.set_xlabel("Fraction of 'texture' decisions")
    top.set_xticks([i / 10 for i in range(11)])
    if title:
        ax.set_title(title)
    if own_figure:
        fig.legend(loc="outside lower center", ncol=2, fontsize="small", frameon=False)
    else:
        ax.legend(fontsize="small")
    return fig
