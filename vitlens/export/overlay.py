"""Blend a patch-grid attention map onto the original photo with OpenCV.

A ViT attention map is a small 2-D array ``[gh, gw]`` over the patch grid. The model
saw a preprocessed (resized, possibly centre-cropped) version of the photo, so the map
covers a box ``(x0, y0, x1, y1)`` of the *original* image. :func:`overlay` upsamples
the map to that box, colours it with an OpenCV colormap and blends it onto the image;
the part of the photo the model never saw is darkened and left uncoloured.

This module depends only on numpy and OpenCV. Torch tensors are accepted without
importing torch (anything with ``.detach()`` is converted via
``.detach().cpu().float().numpy()``).
"""
from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = ["COLORMAPS", "DEFAULT_COLORMAP", "INTERPOLATIONS", "NORMALIZATIONS", "colormap_lut", "overlay",
           "annotate", "overlay_name", "fresh_path", "save_png", "mark_tokens"]

#: Colormap of overlays and figures: perceptually uniform (lightness rises steadily with the
#: value), readable in grey print and by colour-blind readers, unlike "jet".
DEFAULT_COLORMAP = "inferno"
#: Contour levels :func:`overlay` draws by default, as fractions of the map's range.
DEFAULT_CONTOURS = (0.75,)

_COLORMAP_CANDIDATES: tuple[str, ...] = (
    "autumn", "bone", "cividis", "cool", "deepgreen", "hot", "hsv", "inferno", "jet",
    "magma", "ocean", "parula", "pink", "plasma", "rainbow", "spring", "summer", "turbo",
    "twilight", "twilight_shifted", "viridis", "winter",
)

COLORMAPS: dict[str, int] = {
    name: int(getattr(cv2, f"COLORMAP_{name.upper()}"))
    for name in _COLORMAP_CANDIDATES
    if hasattr(cv2, f"COLORMAP_{name.upper()}")
}
"""Lower-case colormap name -> ``cv2.COLORMAP_*`` constant (only those this OpenCV has)."""

INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}
"""Upsampling mode name -> ``cv2.INTER_*`` flag."""

NORMALIZATIONS: tuple[str, ...] = ("minmax", "none")
"""Accepted values of ``overlay(normalize=...)``."""

Box = Sequence[float]


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array, converting torch tensors without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def _choice_error(kind: str, value: object, valid: Sequence[str]) -> ValueError:
    """Build a ValueError naming the valid choices and the closest match, if any."""
    close = difflib.get_close_matches(str(value).lower(), list(valid), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}.{hint}")


def _resolve_colormap(name: str) -> int:
    """Map a (case-insensitive) colormap name to its ``cv2.COLORMAP_*`` constant.

    Raises:
        ValueError: If the name is not in :data:`COLORMAPS`.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in COLORMAPS:
        raise _choice_error("colormap", name, sorted(COLORMAPS))
    return COLORMAPS[key]


def colormap_lut(name: str) -> np.ndarray:
    """Return the 256-entry RGB lookup table of an OpenCV colormap.

    Useful to reproduce exactly the colours of :func:`overlay` elsewhere (e.g. as a
    matplotlib ``ListedColormap``).

    Args:
        name: A key of :data:`COLORMAPS` (case-insensitive).

    Returns:
        A ``[256, 3]`` uint8 array; row ``i`` is the RGB colour of value ``i / 255``.

    Raises:
        ValueError: If the colormap name is unknown.
    """
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    bgr = cv2.applyColorMap(ramp, _resolve_colormap(name))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).reshape(256, 3)


def _as_rgb_image(image: Any) -> np.ndarray:
    """Return ``image`` (HxWx3 uint8 array or PIL image) as a contiguous uint8 RGB array.

    Raises:
        ValueError: If the image is not an HxWx3 uint8 array with non-zero size.
    """
    if not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # PIL.Image
        image = np.asarray(image.convert("RGB"))
    arr = _to_numpy(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"image must be an HxWx3 RGB array (or a PIL image), got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty (shape {tuple(arr.shape)})")
    if arr.dtype != np.uint8:
        raise ValueError(
            f"image must have dtype uint8 (values 0-255), got {arr.dtype}; "
            "convert it, e.g. (img * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    return np.ascontiguousarray(arr)


def _as_map(attn_map: Any) -> np.ndarray:
    """Return ``attn_map`` as a finite 2-D float32 array.

    Raises:
        ValueError: If the map is not 2-D, is empty, or holds NaN/inf.
    """
    m = _to_numpy(attn_map)
    if m.ndim != 2:
        raise ValueError(
            f"attention map must be 2-D [gh, gw] over the patch grid, got shape {tuple(m.shape)}"
        )
    if m.size == 0:
        raise ValueError(f"attention map is empty (shape {tuple(m.shape)})")
    if m.dtype.kind not in "biuf":
        raise ValueError(f"attention map must be real-valued, got dtype {m.dtype}")
    m = m.astype(np.float64)
    if not np.isfinite(m).all():
        raise ValueError("attention map contains NaN or inf values")
    return m


def _normalize(m: np.ndarray, mode: str) -> np.ndarray:
    """Scale a finite map into [0, 1] (``minmax``) or clip it there (``none``)."""
    if mode == "minmax":
        lo, hi = float(m.min()), float(m.max())
        span = hi - lo
        if span <= 0.0 or not math.isfinite(span):
            return np.zeros_like(m, dtype=np.float32)
        return ((m - lo) / span).astype(np.float32)
    if mode == "none":
        return np.clip(m, 0.0, 1.0).astype(np.float32)
    raise _choice_error("normalize mode", mode, NORMALIZATIONS)


def _resolve_box(box: Box | None, width: int, height: int) -> tuple[int, int, int, int]:
    """Round a float ``(x0, y0, x1, y1)`` box to ints and clip it to the image.

    Raises:
        ValueError: If the box is malformed or empty after clipping.
    """
    if box is None:
        return 0, 0, width, height
    vals = list(_to_numpy(box).reshape(-1)) if hasattr(box, "detach") else list(box)
    if len(vals) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    try:
        fvals = [float(v) for v in vals]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"box must hold four numbers (x0, y0, x1, y1), got {box!r}") from exc
    if not all(math.isfinite(v) for v in fvals):
        raise ValueError(f"box coordinates must be finite, got {box!r}")
    x0, y0, x1, y1 = (int(round(v)) for v in fvals)
    # a box thinner than a pixel (e.g. a 1-px-wide image) still covers the pixel it is in
    if x1 <= x0 and fvals[2] > fvals[0]:
        x0, x1 = math.floor(fvals[0]), max(math.ceil(fvals[2]), math.floor(fvals[0]) + 1)
    if y1 <= y0 and fvals[3] > fvals[1]:
        y0, y1 = math.floor(fvals[1]), max(math.ceil(fvals[3]), math.floor(fvals[1]) + 1)
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"box {tuple(fvals)} is empty once rounded and clipped to the "
            f"{width}x{height} image (got x {x0}..{x1}, y {y0}..{y1})"
        )
    return x0, y0, x1, y1


def overlay(
    image: Any,
    attn_map: Any,
    *,
    box: Box | None = None,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = 0.5,
    interpolation: str = "cubic",
    normalize: str = "minmax",
    outside: float = 0.4,
    contours: Sequence[float] = (),
    alpha_by_value: bool = False,
) -> np.ndarray:
    """Colour an attention map and blend it onto the original image.

    The map is normalised, upsampled with ``cv2.resize`` to the size of ``box``,
    coloured with ``cv2.applyColorMap`` and blended as
    ``alpha * colour + (1 - alpha) * image`` inside the box. Outside the box (the part
    of the photo the model never saw after its resize/centre-crop) the image is
    multiplied by ``outside`` and no colour is added.

    A hot spot on a region that is already bright and saturated in the photo can vanish
    in the blend; ``contours`` outlines it whatever the background (a dark line with a
    light core), and ``alpha_by_value`` weights the colour by the value
    (``alpha * v``), so low values leave the photo untouched and the hot spots stand out.

    Args:
        image: HxWx3 uint8 RGB array, or a PIL image (converted to RGB).
        attn_map: 2-D ``[gh, gw]`` map over the patch grid (numpy array, nested
            sequence or torch tensor).
        box: ``(x0, y0, x1, y1)`` region of the original image that the map covers,
            in pixels, ``x1``/``y1`` exclusive. Rounded to ints and clipped to the
            image. ``None`` means the whole image.
        colormap: Lower-case OpenCV colormap name, a key of :data:`COLORMAPS`.
        alpha: Weight of the colour layer in ``[0, 1]``; 0 leaves the image as is.
        interpolation: Upsampling mode: ``"nearest"``, ``"linear"``, ``"cubic"``
            (result clipped to [0, 1]) or ``"area"``.
        normalize: ``"minmax"`` rescales to [0, 1] (a constant map becomes all
            zeros); ``"none"`` assumes values already in [0, 1] and clips.
        outside: Brightness factor in ``[0, 1]`` for pixels outside ``box``
            (1.0 leaves them untouched).
        contours: levels in (0, 1) of the normalised map to outline, e.g.
            :data:`DEFAULT_CONTOURS`; empty for none.
        alpha_by_value: scale the colour's weight by the normalised value per pixel.

    Returns:
        HxWx3 uint8 RGB array at the original image resolution (a new array).

    Raises:
        ValueError: On an unknown colormap/interpolation/normalize mode, ``alpha`` or
            ``outside`` outside [0, 1], a map that is not 2-D or holds NaN/inf, an
            image that is not HxWx3 uint8, or an empty box.
    """
    cmap = _resolve_colormap(colormap)
    if interpolation not in INTERPOLATIONS:
        raise _choice_error("interpolation", interpolation, list(INTERPOLATIONS))
    if normalize not in NORMALIZATIONS:
        raise _choice_error("normalize mode", normalize, NORMALIZATIONS)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    outside = float(outside)
    if not 0.0 <= outside <= 1.0:
        raise ValueError(f"outside must be in [0, 1] (1.0 = untouched), got {outside}")

    img = _as_rgb_image(image)
    m = _normalize(_as_map(attn_map), normalize)
    height, width = img.shape[:2]
    x0, y0, x1, y1 = _resolve_box(box, width, height)

    up = cv2.resize(m, (x1 - x0, y1 - y0), interpolation=INTERPOLATIONS[interpolation])
    up = np.clip(up, 0.0, 1.0)  # cubic overshoots; a no-op for the other modes
    levels = np.round(up * 255.0).astype(np.uint8)
    color = cv2.cvtColor(cv2.applyColorMap(levels, cmap), cv2.COLOR_BGR2RGB)

    if outside == 1.0:
        out = img.copy()
    else:
        out = np.clip(np.round(img.astype(np.float32) * outside), 0, 255).astype(np.uint8)
    inside = np.ascontiguousarray(img[y0:y1, x0:x1])
    if alpha_by_value:
        w = (alpha * up)[..., None].astype(np.float32)
        blend = color.astype(np.float32) * w + inside.astype(np.float32) * (1.0 - w)
        out[y0:y1, x0:x1] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    else:
        out[y0:y1, x0:x1] = cv2.addWeighted(color, alpha, inside, 1.0 - alpha, 0.0)
    levels_c = [float(c) for c in contours]
    if any(not 0.0 < c < 1.0 for c in levels_c):
        raise ValueError(f"contour levels must lie in (0, 1) (fractions of the map's range), got {list(contours)}")
    if levels_c and float(up.max()) > float(up.min()):
        region = np.ascontiguousarray(out[y0:y1, x0:x1])
        width = max(1, round(max(region.shape[:2]) / 250))
        for c in levels_c:
            found, _ = cv2.findContours((up >= c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(region, found, -1, (0, 0, 0), 2 * width + 1, cv2.LINE_AA)
            cv2.drawContours(region, found, -1, (255, 255, 255), width, cv2.LINE_AA)
        out[y0:y1, x0:x1] = region
    return out


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int]:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    return w, h + base


def _fit_text(text: str, width: int, scale: float, thickness: int) -> str:
    """Shorten ``text`` with "..." until it fits ``width`` pixels."""
    if _text_size(text, scale, thickness)[0] <= width:
        return text
    while len(text) > 4 and _text_size(text + "...", scale, thickness)[0] > width:
        text = text[:-1]
    return text + "..."


def annotate(
    image: Any,
    *,
    title: str | None = None,
    colormap: str = DEFAULT_COLORMAP,
    low: str = "low",
    high: str = "high",
    legend: str | None = None,
    min_width: int = 360,
) -> np.ndarray:
    """Frame an overlay for a paper or a slide: a title strip above, a colour bar below.

    The bar shows the colormap from ``low`` to ``high`` (e.g. the map's minimum and
    maximum), and ``legend`` (one line, e.g. what the dimmed area is) goes under it.
    The photo itself is not covered; one narrower than ``min_width`` pixels (a 32x32
    CIFAR image) is enlarged by a whole factor with nearest-neighbour sampling, so every
    pixel stays a sharp square and the text fits.

    Args:
        image: HxWx3 uint8 RGB array, e.g. from :func:`overlay`.
        title: text of the strip above (ASCII; shortened with "..." to fit); none if None.
        colormap: the colormap the overlay used.
        low, high: labels at the two ends of the colour bar.
        legend: one line under the bar; none if None.
        min_width: enlarge narrower images by the smallest whole factor reaching it.

    Returns:
        A new, taller HxWx3 uint8 RGB array.
    """
    img = _as_rgb_image(image)
    lut = colormap_lut(colormap)
    if img.shape[1] < min_width:
        f = math.ceil(min_width / img.shape[1])
        img = cv2.resize(img, (img.shape[1] * f, img.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    h, w = img.shape[:2]
    scale = max(0.35, min(1.0, w / 900))
    thick = 1 if scale < 0.7 else 2
    pad = max(4, round(8 * scale))
    line_h = _text_size("Ag", scale, thick)[1]

    def strip(lines: list[str]) -> np.ndarray:
        s = np.full((pad + len(lines) * (line_h + pad), w, 3), 255, np.uint8)
        for i, text in enumerate(lines):
            text = _fit_text(text, w - 2 * pad, scale, thick)
            y = pad + i * (line_h + pad) + line_h - max(2, round(4 * scale))
            cv2.putText(s, text, (pad, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
        return s

    parts = []
    if title:
        parts.append(strip([title]))
    parts.append(img)
    # colour bar: "low [====gradient====] high"
    lw, _ = _text_size(low, scale, thick)
    hw, _ = _text_size(high, scale, thick)
    bar_h = max(8, round(14 * scale))
    bar = np.full((bar_h + 2 * pad, w, 3), 255, np.uint8)
    x0, x1 = 2 * pad + lw, w - 2 * pad - hw
    if x1 - x0 >= 16:
        ramp = lut[np.linspace(0, 255, x1 - x0).round().astype(int)]
        bar[pad:pad + bar_h, x0:x1] = ramp[None]
        cv2.rectangle(bar, (x0, pad), (x1 - 1, pad + bar_h - 1), (0, 0, 0), 1)
        ty = pad + bar_h // 2 + line_h // 2 - max(2, round(3 * scale))
        cv2.putText(bar, low, (pad, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
        cv2.putText(bar, high, (x1 + pad, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
        parts.append(bar)
    if legend:
        parts.append(strip([legend]))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def _slug(text: str) -> str:
    """A file-name-safe piece: letters, digits, ``. _ + -``; no ``__`` (it separates the parts)."""
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text))).strip("-._") or "x"


def overlay_name(image: str | os.PathLike[str], model: str, method: str, *, layer: int | None = None,
                 head: str | int | None = None, target: str | None = None,
                 settings: dict[str, Any] | None = None, suffix: str = "") -> str:
    """The file name of an overlay: ``<image>__<model>__<method>[_L<layer>][_h<head>][_<k><v>...][_t-<class>].png``.

    One scheme for ``vitlens attend`` and ``vitlens export --overlays``, so maps of
    different models, methods, layers, heads and settings never share a name, e.g.
    ``chelsea__demo__cls_L5_hmean.png``, ``chelsea__demo__rollout_hmean_discard0.9.png``,
    ``chelsea__vit_base_patch16_224.augreg2_in21k_ft_in1k__chefer_t-tabby.png``.

    Args:
        image: the input's path; its file name without extension is used.
        model: model name (timm name with tag, ``demo`` ...).
        method: explanation method.
        layer, head: when the map depends on them.
        target: the class explained, for class-specific methods.
        settings: other options that change the map, e.g. ``{"discard": 0.9}``; values
            equal to their defaults can be left out by the caller.
        suffix: appended to the method part (e.g. ``"heads"`` for a head grid).
    """
    parts = [_slug(method)]
    if layer is not None:
        parts.append(f"L{int(layer)}")
    if head is not None:
        parts.append(f"h{_slug(head)}")
    for k, v in (settings or {}).items():
        parts.append(f"{_slug(k)}{_slug(v)}")
    if target is not None:
        parts.append(f"t-{_slug(target)}")
    if suffix:
        parts.append(_slug(suffix))
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", Path(image).stem).strip("._") or "image"
    return f"{stem}__{_slug(model)}__{'_'.join(parts)}.png"


def fresh_path(path: str | os.PathLike[str], overwrite: bool = False, taken: set[Path] | None = None) -> Path:
    """``path``, or when that file exists (or is in ``taken``) and ``overwrite`` is off, the
    first free ``name-2.png``, ``name-3.png`` ...; the result is added to ``taken``."""
    p = Path(path)
    taken = taken if taken is not None else set()
    cand, n = p, 2
    while cand in taken or (not overwrite and cand.exists()):
        cand, n = p.with_name(f"{p.stem}-{n}{p.suffix}"), n + 1
    taken.add(cand)
    return cand


def mark_tokens(
    image: Any,
    mask: Any,
    *,
    box: Box | None = None,
    color: Sequence[int] = (0, 255, 255),
    thickness: int = 1,
) -> np.ndarray:
    """Outline the patch-grid cells where ``mask`` is True (e.g. high-norm artefact tokens).

    The grid ``[gh, gw]`` is laid over ``box`` as :func:`overlay` lays the map: cell
    ``(r, c)`` covers x in ``[x0 + c·w/gw, x0 + (c+1)·w/gw)`` and y likewise. Use it on a
    photo or on the output of :func:`overlay`, e.g. with the mask of
    :func:`vitlens.analysis.artefacts.high_norm_tokens`.

    Args:
        image: HxWx3 uint8 RGB array or PIL image.
        mask: 2-D ``[gh, gw]`` bool (or 0/1) array or tensor.
        box: ``(x0, y0, x1, y1)`` region the grid covers (``None``: the whole image).
        color: RGB outline colour.
        thickness: outline width in pixels, >= 1.

    Returns:
        A new HxWx3 uint8 RGB array.
    """
    img = _as_rgb_image(image).copy()
    m = _to_numpy(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"mask must be a 2-D [gh, gw] grid, got shape {tuple(m.shape)}")
    if isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) or thickness < 1:
        raise ValueError(f"thickness must be a positive integer, got {thickness!r}")
    rgb = tuple(int(v) for v in color)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"color must be three integers in 0..255 (R, G, B), got {color!r}")
    height, width = img.shape[:2]
    x0, y0, x1, y1 = _resolve_box(box, width, height)
    gh, gw = m.shape
    for r, c in zip(*np.nonzero(m.astype(bool))):
        left = x0 + int(round(c * (x1 - x0) / gw))
        right = x0 + int(round((c + 1) * (x1 - x0) / gw)) - 1
        top = y0 + int(round(r * (y1 - y0) / gh))
        bottom = y0 + int(round((r + 1) * (y1 - y0) / gh)) - 1
        cv2.rectangle(img, (left, top), (max(left, right), max(top, bottom)), rgb, int(thickness))
    return img


def save_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an RGB image to a PNG file, creating parent directories.

    Args:
        path: Destination; must end in ``.png`` (any case).
        rgb: HxWx3 uint8 RGB array, e.g. the result of :func:`overlay`.

    Raises:
        ValueError: If the array is not HxWx3 uint8 or the path does not end in .png.
        OSError: If the directory cannot be created or the file cannot be written.
    """
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"save_png writes PNG files; give a path ending in .png, got '{p}'")
    arr = _as_rgb_image(rgb)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot write PNG '{p}': cannot create folder '{p.parent}': {exc}") from exc
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    try:
        ok = cv2.imwrite(str(p), bgr)
    except cv2.error as exc:
        raise OSError(f"cannot write PNG '{p}': {exc}") from exc
    if not ok:
        raise OSError(
            f"cannot write PNG '{p}': OpenCV could not write the file "
            "(check that the folder is writable and the path is valid)"
        )
