"""Matplotlib figures of per-head attention maps.

Matplotlib is imported lazily inside the functions, and figures are built with
:class:`matplotlib.figure.Figure` directly (never ``pyplot``), so importing this module
or building a figure touches no global pyplot state or interactive backend. Nothing is
shown or saved implicitly: :func:`head_grid` returns the figure and
:func:`save_figure` writes it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vitlens.export.overlay import _as_map, _as_rgb_image, _to_numpy, colormap_lut, overlay

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["FIGURE_FORMATS", "head_grid", "save_figure"]
__all__ += ["distance_vs_depth"]
__all__ += ["cls_grid", "rollout_grid"]

FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""File extensions :func:`save_figure` accepts."""

_MAX_COLS = 6
_PANEL_INCHES = 2.4


def _as_head_maps(maps: Any) -> np.ndarray:
    """Return ``maps`` as a finite ``[H, gh, gw]`` float array (a 2-D map is one head)."""
    arr = _to_numpy(maps)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"maps must be [heads, gh, gw] (one 2-D map per head), got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise ValueError("maps holds no heads (first dimension is 0)")
    return np.stack([_as_map(m) for m in arr])


def head_grid(
    maps: Any,
    image: Any = None,
    *,
    box: Sequence[float] | None = None,
    title: str | None = None,
    head_labels: Sequence[Any] | None = None,
    colormap: str = "inferno",
    alpha: float = 0.5,
    ncols: int | None = None,
    fused: Any = None,
    fused_label: str = "mean",
) -> "Figure":
    """Draw one panel per attention head in a grid.

    With ``image``, each panel is :func:`vitlens.export.overlay.overlay` of that head's
    map on the photo (each map min-max normalised on its own). Without it, each panel
    shows the raw map with one colour scale shared by all panels and a single
    colourbar.

    Args:
        maps: ``[H, gh, gw]`` array or torch tensor, one map per head (a single 2-D
            map is treated as one head).
        image: Optional HxWx3 uint8 RGB array or PIL image to overlay the maps on.
        box: ``(x0, y0, x1, y1)`` region of ``image`` the maps cover (see
            :func:`~vitlens.export.overlay.overlay`); ignored without ``image``.
        title: Figure title (suptitle); none if ``None``.
        head_labels: Panel titles, one per head; defaults to ``"head 0"``, ``"head 1"``...
        colormap: OpenCV colormap name (a key of
            :data:`~vitlens.export.overlay.COLORMAPS`); raw panels use the same colours.
        alpha: Colour weight of the overlays in [0, 1]; ignored without ``image``.
        ncols: Number of grid columns; defaults to ``ceil(sqrt(panels))``, at most 6.
        fused: Optional extra ``[gh, gw]`` map (e.g. the head mean) drawn as a last
            panel.
        fused_label: Title of the ``fused`` panel.

    Returns:
        A :class:`matplotlib.figure.Figure` (not shown, not saved) with tight layout.

    Raises:
        ValueError: On malformed maps, labels, ``ncols``, colormap or image.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    heads = _as_head_maps(maps)
    n_heads = heads.shape[0]
    panels: list[np.ndarray] = list(heads)
    if head_labels is None:
        labels = [f"head {i}" for i in range(n_heads)]
    else:
        labels = [str(label) for label in head_labels]
        if len(labels) != n_heads:
            raise ValueError(f"got {len(labels)} head_labels for {n_heads} heads")
    if fused is not None:
        fused_map = _as_map(fused)
        if fused_map.shape != heads.shape[1:]:
            raise ValueError(
                f"fused map shape {fused_map.shape} does not match the head maps' "
                f"grid {heads.shape[1:]}"
            )
        panels.append(fused_map)
        labels.append(str(fused_label))

    n_panels = len(panels)
    if ncols is None:
        ncols = min(math.ceil(math.sqrt(n_panels)), _MAX_COLS)
    elif isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    ncols = min(int(ncols), n_panels)
    nrows = math.ceil(n_panels / ncols)

    lut = colormap_lut(colormap)  # validates the name for both modes
    rgb = _as_rgb_image(image) if image is not None else None
    if rgb is not None:
        aspect = rgb.shape[1] / rgb.shape[0]
    else:
        aspect = heads.shape[2] / heads.shape[1]
    panel_w = _PANEL_INCHES * min(max(aspect, 0.4), 3.0)
    panel_h = panel_w / aspect if rgb is not None else _PANEL_INCHES   # the image's own height
    title_room = 0.35   # each panel's title sits in its own band, clear of the images above
    cbar_w = 0.0 if rgb is not None else 0.6
    fig = Figure(
        figsize=(ncols * panel_w + cbar_w, nrows * (panel_h + title_room) + (0.5 if title else 0.0)),
        layout="tight",
    )

    if rgb is not None:
        grid = GridSpec(nrows, ncols, figure=fig)
    else:
        grid = GridSpec(nrows, ncols + 1, figure=fig, width_ratios=[1.0] * ncols + [0.06])
        cmap = ListedColormap(lut.astype(np.float64) / 255.0, name=str(colormap).lower())
        vmin = float(min(p.min() for p in panels))
        vmax = float(max(p.max() for p in panels))

    im = None
    for k, (panel, label) in enumerate(zip(panels, labels)):
        ax = fig.add_subplot(grid[k // ncols, k % ncols])
        if rgb is not None:
            ax.imshow(overlay(rgb, panel, box=box, colormap=colormap, alpha=alpha))
        else:
            im = ax.imshow(panel, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()

    if im is not None:
        cax = fig.add_subplot(grid[:, ncols])
        fig.colorbar(im, cax=cax)
    if title:
        fig.suptitle(title)
    return fig


def _head_stat_arrays(stats: Any, std: Any) -> tuple[np.ndarray, np.ndarray | None, list[int], str, str]:
    """``(mean [L, H], std [L, H] | None, layers, statistic, unit)`` from what distance_vs_depth accepts."""
    if hasattr(stats, "layer_summary") and hasattr(stats, "std"):   # vitlens HeadStatistics
        mean = _to_numpy(stats.mean).astype(np.float64)
        sd = _to_numpy(stats.std()).astype(np.float64) if std is None else _to_numpy(std).astype(np.float64)
        layers = list(stats.layers) or list(range(mean.shape[0]))
        return mean, sd, layers, str(stats.statistic), str(stats.unit)
    arr = _to_numpy(stats).astype(np.float64)
    if arr.ndim == 3:             # [B, L, H] per image: mean and std over images
        import warnings

        with warnings.catch_warnings():   # all-NaN heads (absent in a layer) stay NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, sd = np.nanmean(arr, axis=0), np.nanstd(arr, axis=0)
    elif arr.ndim == 2:
        mean, sd = arr, None
    else:
        raise ValueError(f"stats must be HeadStatistics, [L, H] means or [B, L, H] per-image values, "
                         f"got shape {tuple(arr.shape)}")
    if std is not None:
        sd = _to_numpy(std).astype(np.float64)
    return mean, sd, list(range(mean.shape[0])), "distance", "pixels"


def distance_vs_depth(
    stats: Any,
    *,
    std: Any = None,
    layers: Sequence[int] | None = None,
    error_bars: bool = True,
    ax: Any = None,
    title: str | None = None,
    ylabel: str | None = None,
    legend: bool | None = None,
    markersize: float = 5.0,
    dodge: float | None = None,
) -> "Figure":
    """Mean attention distance against depth, one dot per head (Dosovitskiy et al. 2021, Fig. 7).

    x is the layer, y the statistic (mean attention distance in pixels, or entropy...),
    one dot per head and layer, coloured by head; optional error bars show the std over
    images (the dataset spread, not an uncertainty of the mean).

    Args:
        stats: a :class:`vitlens.HeadStatistics` (mean, std, layers and unit read from it),
            an ``[L, H]`` array/tensor of per-head means, or ``[B, L, H]`` per-image values
            (e.g. :func:`vitlens.mean_attention_distance`; mean and std over images).
        std: ``[L, H]`` error-bar half-widths overriding the ones from ``stats``.
        layers: x position (layer index) of each row; default ``stats.layers`` or 0..L-1.
        error_bars: draw the std as vertical error bars when there is one.
        ax: matplotlib Axes to draw on; default a new figure.
        title: axes title.
        ylabel: y label; default from the statistic and unit.
        legend: show a legend of heads; default when there are at most 8 heads.
        markersize: dot size in points.
        dodge: total horizontal spread (in layers) of a layer's heads, so that overlapping error
            bars stay apart; default 0.4 when error bars are drawn and 0 (dots at the layer) otherwise.

    Returns:
        The :class:`matplotlib.figure.Figure` holding the axes (not shown, not saved).
    """
    mean, sd, default_layers, statistic, unit = _head_stat_arrays(stats, std)
    if mean.ndim != 2 or mean.size == 0:
        raise ValueError(f"need per-head means [L, H] with L, H >= 1, got shape {tuple(mean.shape)}")
    if sd is not None and sd.shape != mean.shape:
        raise ValueError(f"std has shape {tuple(sd.shape)}, expected {tuple(mean.shape)} like the means")
    xs = list(default_layers if layers is None else layers)
    if len(xs) != mean.shape[0]:
        raise ValueError(f"got {len(xs)} layers for {mean.shape[0]} rows of statistics")
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.0, 3.6), layout="tight")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    n_heads = mean.shape[1]
    if legend is None:
        legend = n_heads <= 8
    colors = [f"C{h % 10}" for h in range(n_heads)]
    x0 = np.asarray(xs, dtype=np.float64)
    bars = error_bars and sd is not None
    spread = (0.4 if bars else 0.0) if dodge is None else float(dodge)
    if len(x0) > 1:                          # never wider than the gap between neighbouring layers
        spread = min(spread, 0.8 * float(np.min(np.diff(np.sort(x0)))))
    for h in range(n_heads):
        y = mean[:, h]
        keep = np.isfinite(y)
        if not keep.any():
            continue
        x = x0 + (spread * (h / (n_heads - 1) - 0.5) if n_heads > 1 else 0.0)
        if bars:
            ax.errorbar(x[keep], y[keep], yerr=np.nan_to_num(sd[keep, h]), fmt="o", color=colors[h],
                        markersize=markersize, elinewidth=0.8, capsize=2, alpha=0.85, label=f"head {h}")
        else:
            ax.plot(x[keep], y[keep], "o", color=colors[h], markersize=markersize, alpha=0.85, label=f"head {h}")
    ax.set_xlabel("layer")
    if ylabel is None:
        ylabel = {"distance": "mean attention distance", "entropy": "attention entropy"}.get(statistic, statistic)
        ylabel = f"{ylabel} ({unit})" if unit else ylabel
    ax.set_ylabel(ylabel)
    ax.set_xticks(x0)
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=7, frameon=False, ncol=2 if n_heads > 4 else 1)
    return fig


def _map_panels(maps: Any, ndim: int, what: str) -> np.ndarray:
    arr = _to_numpy(maps).astype(np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{what}, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what}, got no images (first dimension is 0)")
    return arr


def _grid_panel(ax: Any, panel: np.ndarray, image: Any, box: Any, colormap: str, alpha: float, cmap: Any,
                vmin: float | None, vmax: float | None) -> Any:
    """One map panel: overlaid on ``image`` when given, else raw values (NaN = blank)."""
    ax.set_axis_off()
    if not np.isfinite(panel).any():
        ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        return None
    if image is not None:
        ax.imshow(overlay(image, np.nan_to_num(panel), box=box, colormap=colormap, alpha=alpha))
        return None
    return ax.imshow(panel, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")


def cls_grid(
    maps: Any,
    images: Sequence[Any] | None = None,
    *,
    boxes: Sequence[Any] | None = None,
    row_labels: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    title: str | None = None,
    colormap: str = "inferno",
    alpha: float = 0.5,
) -> "Figure":
    """CLS attention of several images across depth: one row per image, one column per layer.

    Reads the ``cls_attention`` rows of a ``vitlens export`` file (heads already fused,
    e.g. ``f["cls_attention"][rows].mean(axis=2)``), or ``vitlens.cls_attention`` maps
    stacked over layers.

    Args:
        maps: ``[R, L, gh, gw]`` maps (R images, L layers); NaN rows (failed images) draw
            as "no data".
        images: optional R photos (uint8 RGB arrays / PIL images; None entries allowed)
            to overlay each row on; without them raw maps share one colour scale per column.
        boxes: per image, the ``(x0, y0, x1, y1)`` region the map covers (see
            :func:`~vitlens.export.overlay.overlay`).
        row_labels: one label per image (e.g. its path).
        layers: column labels (layer indices); default 0..L-1.
        title: figure title.
        colormap: OpenCV colormap name.
        alpha: overlay opacity.

    Returns:
        A :class:`matplotlib.figure.Figure` (not shown, not saved).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    arr = _map_panels(maps, 4, "maps must be [images, layers, gh, gw]")
    n_rows, n_cols = arr.shape[:2]
    cols = list(range(n_cols)) if layers is None else list(layers)
    if len(cols) != n_cols:
        raise ValueError(f"got {len(cols)} layer labels for {n_cols} layers")
    if images is not None and len(images) != n_rows:
        raise ValueError(f"got {len(images)} images for {n_rows} rows of maps")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"got {len(row_labels)} row labels for {n_rows} rows of maps")
    cmap = ListedColormap(colormap_lut(colormap).astype(np.float64) / 255.0, name=str(colormap).lower())
    size = 1.6
    fig = Figure(figsize=(n_cols * size + 0.8, n_rows * size + (0.5 if title else 0.2)), layout="tight")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for c in range(n_cols):
        col = arr[:, c]
        finite = col[np.isfinite(col)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for r in range(n_rows):
            img = images[r] if images is not None else None
            box = boxes[r] if boxes is not None and img is not None else None
            _grid_panel(axes[r, c], arr[r, c], img, box, colormap, alpha, cmap, vmin, vmax)
            if r == 0:
                axes[r, c].set_title(f"layer {cols[c]}", fontsize=8)
    if row_labels is not None:
        for r in range(n_rows):
            axes[r, 0].text(-0.08, 0.5, str(row_labels[r]), fontsize=7, ha="right", va="center",
                            rotation=90, transform=axes[r, 0].transAxes)
    if title:
        fig.suptitle(title)
    return fig


def rollout_grid(
    maps: Any,
    images: Sequence[Any] | None = None,
    *,
    boxes: Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    colormap: str = "inferno",
    alpha: float = 0.5,
) -> "Figure":
    """Attention-rollout maps of several images, one panel each.

    Reads the ``rollout`` rows of a ``vitlens export`` file or :func:`vitlens.rollout` output.

    Args:
        maps: ``[R, gh, gw]`` maps; NaN maps (failed images) draw as "no data".
        images: optional R photos to overlay on (None entries allowed); without them
            the raw maps share one colour scale and a colourbar.
        boxes: per image, the region the map covers.
        labels: one panel title per image.
        ncols: grid columns; default ``ceil(sqrt(R))``, at most 6.
        title: figure title.
        colormap: OpenCV colormap name.
        alpha: overlay opacity.

    Returns:
        A :class:`matplotlib.figure.Figure` (not shown, not saved).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    arr = _map_panels(maps, 3, "maps must be [images, gh, gw]")
    n = arr.shape[0]
    if images is not None and len(images) != n:
        raise ValueError(f"got {len(images)} images for {n} maps")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} maps")
    if ncols is None:
        ncols = min(math.ceil(math.sqrt(n)), _MAX_COLS)
    elif isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    ncols = min(int(ncols), n)
    nrows = math.ceil(n / ncols)
    cmap = ListedColormap(colormap_lut(colormap).astype(np.float64) / 255.0, name=str(colormap).lower())
    finite = arr[np.isfinite(arr)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(ncols * 2.2 + 0.8, nrows * 2.2 + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for k in range(nrows * ncols):
        ax = axes[k // ncols, k % ncols]
        if k >= n:
            ax.set_axis_off()
            continue
        img = images[k] if images is not None else None
        box = boxes[k] if boxes is not None and img is not None else None
        im = _grid_panel(ax, arr[k], img, box, colormap, alpha, cmap, vmin, vmax) or im
        if labels is not None:
            ax.set_title(str(labels[k]), fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig: "Figure", path: str | os.PathLike[str], dpi: int = 150) -> None:
    """Save a figure, choosing the format from the file extension.

    Args:
        fig: A matplotlib figure, e.g. from :func:`head_grid`.
        path: Destination ending in ``.png``, ``.pdf`` or ``.svg``; parent folders are
            created.
        dpi: Resolution for raster output (and embedded images), a positive integer.

    Raises:
        ValueError: If the extension is not supported or ``dpi`` is not positive.
        OSError: If the folder cannot be created or the file cannot be written.
    """
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(
            f"cannot tell the figure format from '{p}': use one of "
            f"{', '.join('.' + f for f in FIGURE_FORMATS)}"
        )
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.number)) or not dpi > 0:
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot save figure '{p}': cannot create folder '{p.parent}': {exc}") from exc
    try:
        fig.savefig(p, format=fmt, dpi=dpi)
    except OSError as exc:
        raise OSError(f"cannot save figure '{p}': {exc}") from exc
