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
    panel_h = _PANEL_INCHES
    cbar_w = 0.0 if rgb is not None else 0.6
    fig = Figure(
        figsize=(ncols * panel_w + cbar_w, nrows * panel_h + (0.4 if title else 0.0)),
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
