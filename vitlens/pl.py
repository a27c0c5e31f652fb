"""Plots of analysis results, one function per result, in one place (scanpy's ``pl.*``
beside ``tl.*``): ``vitlens.pl.faithfulness(vitlens.evaluate(...))``.

- :func:`explanation`: an :class:`~vitlens.Explanation` or :class:`~vitlens.AttentionMaps`,
  one image's map, over the image when given;
- :func:`heads`: per-head maps ``[H, gh, gw]``, a grid with one panel per head;
- :func:`head_statistics`: a :class:`~vitlens.HeadStatistics`, the statistic against
  depth, one dot per head;
- :func:`faithfulness`: a :class:`~vitlens.FaithfulnessResult`, mean curves with the AUC
  in the legend;
- :func:`keep_ratio`: a :class:`~vitlens.KeepRatioCurve`, accuracy against the fraction
  of tokens kept;
- :func:`shape_bias`: one or more :class:`~vitlens.ShapeBiasResult`, per-category shape
  bias in the style of Geirhos et al.

Every function draws into ``ax=`` when given (single-panel plots) and returns the
:class:`matplotlib.figure.Figure`; nothing is shown or saved
(:func:`vitlens.export.figures.save_figure` writes a figure). Matplotlib is imported
only when a function is called, so ``import vitlens`` does not load it. The CLI and the
notebooks draw with these functions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["explanation", "heads", "head_statistics", "faithfulness", "keep_ratio", "shape_bias"]


def explanation(result: Any, index: int = 0, image: Any = None, *, box: Sequence[float] | None = None,
        ax: "Axes | None" = None, title: str | None = None, colormap: str = "inferno", alpha: float = 0.5,
        colorbar: bool = True) -> "Figure":
    """One image's patch map (:func:`vitlens.explanation`, :func:`vitlens.attention_maps`): over ``image`` when given, else as a heat map with a colour bar.

    Args:
        result: an :class:`~vitlens.Explanation` or :class:`~vitlens.AttentionMaps`
            (their ``maps``), or a ``[B, gh, gw]`` / ``[gh, gw]`` tensor or array.
        index: which image of the batch.
        image: the photo (HxWx3 uint8 array or PIL image) to overlay the map on.
        box: ``(x0, y0, x1, y1)`` part of ``image`` the map covers
            (:func:`vitlens.export.overlay.overlay`).
        ax: draw into these axes; default a new figure.
        title: axes title; default the result's method (and target class when known).
        colormap: OpenCV/matplotlib colormap name.
        alpha: overlay opacity.
        colorbar: add a colour bar to a heat map (not to overlays).
    """
    from .export.overlay import _to_numpy, overlay

    maps = getattr(result, "maps", result)
    arr = _to_numpy(maps)
    if arr.ndim == 3:
        if not -arr.shape[0] <= index < arr.shape[0]:
            raise ValueError(f"index {index} is out of range for {arr.shape[0]} maps")
        arr = arr[index]
    if arr.ndim != 2:
        raise ValueError(f"map() draws one [gh, gw] map per image; got maps of shape {tuple(_to_numpy(maps).shape)} "
                         f"(per-head maps: use vitlens.pl.heads)")
    fig, ax = _axes(ax, (4.0, 4.0))
    if title is None and hasattr(result, "method"):
        title = str(result.method)
        target = getattr(result, "target", None)
        if target is not None and getattr(target, "numel", lambda: 0)():
            title += f", class {int(target.reshape(-1)[index])}"
    if image is not None:
        ax.imshow(overlay(image, arr, box=box, colormap=colormap, alpha=alpha))
    else:
        im = ax.imshow(arr, cmap=colormap, interpolation="nearest")
        if colorbar:
            fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def heads(maps: Any, image: Any = None, **kwargs: Any) -> "Figure":
    """Per-head maps ``[H, gh, gw]`` as a grid (:func:`vitlens.export.figures.head_grid`;
    keyword arguments as there). A grid is several axes, so it always makes its own figure."""
    from .export.figures import head_grid

    return head_grid(getattr(maps, "maps", maps), image, **kwargs)


def head_statistics(stats: Any, *, ax: "Axes | None" = None, **kwargs: Any) -> "Figure":
    """A :class:`~vitlens.HeadStatistics` (or ``[L, H]`` values) against depth, one dot per head
    (:func:`vitlens.export.figures.distance_vs_depth`; keyword arguments as there)."""
    from .export.figures import distance_vs_depth

    return distance_vs_depth(stats, ax=ax, **kwargs)


def faithfulness(result: Any, metrics: str | Sequence[str] | None = None, *, ax: "Axes | None" = None,
                 title: str | None = None) -> "Figure":
    """Mean curves of a :class:`~vitlens.FaithfulnessResult`, one panel per metric
    (:func:`vitlens.export.curves.faithfulness_curves`; ``ax=`` draws one metric)."""
    from .export.curves import faithfulness_curves

    return faithfulness_curves(result, metrics, ax=ax, title=title)


def keep_ratio(curve: Any, *, ax: "Axes | None" = None, title: str | None = None) -> "Figure":
    """A :class:`~vitlens.KeepRatioCurve` (:func:`vitlens.export.curves.keep_ratio_plot`)."""
    from .export.curves import keep_ratio_plot

    return keep_ratio_plot(curve, ax=ax, title=title)


def shape_bias(results: Any, *, ax: "Axes | None" = None, labels: Sequence[str] | None = None,
               **kwargs: Any) -> "Figure":
    """One or several :class:`~vitlens.ShapeBiasResult` (or their ``to_dict()``)
    (:func:`vitlens.export.shape_bias_plot.shape_bias_plot`; keyword arguments as there)."""
    from .export.shape_bias_plot import shape_bias_plot

    return shape_bias_plot(results, labels=labels, ax=ax, **kwargs)


def _axes(ax: "Axes | None", size: tuple[float, float]) -> "tuple[Figure, Axes]":
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)

