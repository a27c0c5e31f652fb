"""Write the interactive attention explorer: one self-contained HTML page (or a notebook
fragment) from :class:`vitlens.explore.ExplorerData`.

The page holds everything inline: the script and style (``explorer.js`` / ``explorer.css``
beside this module), the photo as a ``data:`` URI, and the arrays as base64 in a
``<script type="application/json">`` block. A Content-Security-Policy forbids every network
request (``default-src 'none'``), so the page works from ``file://`` and offline.

Array encoding (``{"dtype", "shape", "b64"[, "scale"]}``, little-endian):

- ``"u8row"``: attention, quantised per row (the last axis): ``q = round(v / max_row * 255)``
  stored as uint8, ``scale = max_row / 255`` as float32 per row; decoded ``v ≈ q · scale``, an
  error of at most ``max_row / 510``. Rows of attention sum to 1, so a ViT-B/16 layer
  (12 x 197 x 197) takes 466 kB, 622 kB as base64.
- ``"f16"`` / ``"f32"`` / ``"i32"``: plain arrays.

Each explorer gets a unique element id; its script finds its root by that id and keeps all
state in a closure, and every CSS rule is scoped under ``.vlx``, so several explorers can
share one notebook.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import uuid
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .overlay import COLORMAPS, colormap_lut

if TYPE_CHECKING:  # pragma: no cover
    from ..explore import ExplorerData, GlobalData

__all__ = ["PRECISIONS", "encode_array", "decode_array", "payload", "render_fragment", "render_page",
           "write_page", "write_index", "write_global", "check_options"]

#: How attention is stored in the page.
PRECISIONS = ("uint8", "float16")

_CSP = ("default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'none'; font-src 'none'; form-action 'none'; base-uri 'none'")


def check_options(*, precision: str = "uint8", colormap: str = "jet", max_image_side: int | None = None) -> None:
    """Raise ValueError for an unknown precision or colormap, or a bad ``max_image_side``."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(colormap, str) or colormap.lower() not in COLORMAPS:
        colormap_lut(str(colormap))   # raises the error with the valid names and a close match
    if max_image_side is not None and (isinstance(max_image_side, bool) or not isinstance(max_image_side, int)
                                       or max_image_side < 16):
        raise ValueError(f"`max_image_side` must be None or an int >= 16, got {max_image_side!r}")


# ----------------------------------------------------------------------- arrays
def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).decode("ascii")


def encode_array(a: np.ndarray, dtype: str) -> dict[str, Any]:
    """Encode an array for the page (see the module docstring for the formats)."""
    a = np.asarray(a)
    shape = [int(s) for s in a.shape]
    if dtype == "u8row":
        x = np.nan_to_num(a.astype(np.float32), nan=0.0).reshape(-1, shape[-1] if shape else 1)
        if (x < 0).any():
            raise ValueError("u8row encodes non-negative arrays (attention probabilities) only")
        top = x.max(axis=1)
        scale = (top / 255.0).astype(np.float32)
        safe = np.where(top > 0, top, 1.0)
        q = np.clip(np.rint(x / safe[:, None] * 255.0), 0, 255).astype(np.uint8)
        return {"dtype": "u8row", "shape": shape, "b64": _b64(q), "scale": _b64(scale)}
    if dtype == "f16":
        return {"dtype": "f16", "shape": shape, "b64": _b64(a.astype(np.float16))}
    if dtype == "f32":
        return {"dtype": "f32", "shape": shape, "b64": _b64(a.astype(np.float32))}
    if dtype == "i32":
        return {"dtype": "i32", "shape": shape, "b64": _b64(a.astype(np.int32))}
    raise ValueError(f"unknown array encoding {dtype!r}; use u8row, f16, f32 or i32")


def decode_array(enc: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_array` (what the page's script computes), as float32 / int32."""
    raw = base64.b64decode(enc["b64"])
    shape = tuple(enc["shape"])
    kind = enc["dtype"]
    if kind == "u8row":
        q = np.frombuffer(raw, dtype=np.uint8).astype(np.float32).reshape(-1, shape[-1])
        scale = np.frombuffer(base64.b64decode(enc["scale"]), dtype="<f4")
        return (q * scale[:, None]).reshape(shape)
    dt = {"f16": "<f2", "f32": "<f4", "i32": "<i4"}[kind]
    out = np.frombuffer(raw, dtype=dt).reshape(shape)
    return out.astype(np.int32 if kind == "i32" else np.float32)


# ----------------------------------------------------------------------- payload
def _image_uri(image: Any, max_side: int | None) -> tuple[str, int, int, float]:
    """The photo as a data: URI (PNG for small images, JPEG q90 otherwise), its size, and the scale applied."""
    from PIL import Image

    img = image.convert("RGB")
    w, h = img.size
    f = 1.0
    if max_side is not None and max(w, h) > max_side:
        f = max_side / max(w, h)
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if max(img.size) <= 256:
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        img.save(buf, format="JPEG", quality=90)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}", img.size[0], img.size[1], f


def _stat_rows(values: np.ndarray, layers: Sequence[Any]) -> list[list[float | None]]:
    return [[None if not math.isfinite(float(values[ly.layer, h])) else round(float(values[ly.layer, h]), 5)
             for h in ly.heads] for ly in layers]


def payload(data: "ExplorerData", *, precision: str = "uint8", colormap: str = "jet",
            max_image_side: int | None = None) -> dict[str, Any]:
    """The JSON the page's script reads (see ``explorer.js``)."""
    check_options(precision=precision, colormap=colormap, max_image_side=max_image_side)
    src, iw, ih, f = _image_uri(data.image, max_image_side)
    att = "u8row" if precision == "uint8" else "f16"
    layers = []
    for ly in data.layers:
        entry: dict[str, Any] = {"layer": ly.layer, "grid": list(ly.grid), "patch": list(ly.patch),
                                 "heads": list(ly.heads), "attn": encode_array(ly.attention, att),
                                 "received": encode_array(ly.received, "f16" if precision == "float16" else "f32"),
                                 "window": None}
        if ly.window is not None:
            w = ly.window
            entry["window"] = {"stage": w.stage, "size": list(w.window_size), "shift": list(w.shift_size),
                               "num_windows": w.num_windows, "n": w.window_area,
                               "token_index": encode_array(ly.token_index, "i32"),
                               "window_id": encode_array(ly.window_id, "i32"),
                               "region_id": encode_array(ly.region_id, "i32")}
        layers.append(entry)
    maps = [{"name": m.name, "label": m.label, "grid": list(m.grid), "patch": list(m.patch),
             "classes": m.classes, "maps": encode_array(m.maps, "f32")} for m in data.maps]
    return {
        "version": 1, "name": data.name, "model": data.model_name, "family": data.family,
        "windowed": data.windowed, "prefix": list(data.prefix_names), "input": list(data.input_size),
        "box": [v * f for v in data.box], "num_layers": data.num_layers,
        "image": {"src": src, "w": iw, "h": ih},
        "classes": data.classes, "layers": layers, "maps": maps,
        "stats": {"distance": _stat_rows(data.stats["distance"], data.layers),
                  "entropy": _stat_rows(data.stats["entropy"], data.layers), "units": dict(data.stat_units)},
        "colormap": colormap.lower(), "lut": colormap_lut(colormap).reshape(-1).tolist(),
        "precision": precision, "notes": list(data.notes),
    }


# ----------------------------------------------------------------------- HTML
def _asset(name: str) -> str:
    return (resources.files("vitlens.export") / name).read_text(encoding="utf-8")


def _json_for_script(obj: Any) -> str:
    # inside <script type="application/json">, "</" must not appear (it could close the element)
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_fragment(data: "ExplorerData", *, uid: str | None = None, **options: Any) -> str:
    """The explorer as an HTML fragment (style, root element, data, script) with its own id."""
    uid = uid or f"vlx-{uuid.uuid4().hex[:12]}"
    body = _json_for_script(payload(data, **options))
    return (f'<style>{_asset("explorer.css")}</style>\n'
            f'<div class="vlx" id="{uid}"><em>vitlens explorer: loading (needs JavaScript)...</em></div>\n'
            f'<script type="application/json" id="{uid}-data">{body}</script>\n'
            f'<script>(function () {{\n{_asset("explorer.js")}\n'
            f'var root = document.getElementById("{uid}");\n'
            f'try {{ vitlensExplorer(root, JSON.parse(document.getElementById("{uid}-data").textContent)); }}\n'
            f'catch (e) {{ root.textContent = "vitlens explorer failed: " + e; throw e; }}\n'
            f'}})();</script>\n')


def render_page(data: "ExplorerData", **options: Any) -> str:
    """The standalone page: the fragment in a document that allows no network request."""
    title = html.escape(f"{data.name} - {data.model_name} - vitlens explorer")
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n<link rel=\"icon\" href=\"data:,\">\n</head>\n<body>\n"
            f"{render_fragment(data, **options)}</body>\n</html>\n")


def write_page(path: str | os.PathLike[str], data: "ExplorerData", **options: Any) -> Path:
    """Write :func:`render_page` to ``path`` (parents created); returns the path."""
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the explorer is an HTML page; give a path ending in .html, got '{p}'")
    text = render_page(data, **options)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def _thumbnail(image: Any, side: int = 160) -> str:
    from PIL import Image

    img = image.convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_index(path: str | os.PathLike[str], entries: Sequence[tuple[str, str, "ExplorerData"]],
                failed: Sequence[tuple[str, str]] = (), global_href: str | None = None) -> Path:
    """An ``index.html`` gallery: a thumbnail and the top prediction per page, linking to it.

    Args:
        path: where to write it.
        entries: ``(image name, page file name relative to the index, data)`` per page.
        failed: ``(image name, reason)`` per image without a page.
        global_href: the query/key view to link to, if written.
    """
    cards = []
    for name, href, data in entries:
        top = data.classes[0] if data.classes else None
        what = f"{html.escape(top['name'])} {top['prob']:.2f}" if top else ""
        cards.append(f'<a class="card" href="{html.escape(href, quote=True)}"><img alt="" src="{_thumbnail(data.image)}">'
                     f'<span>{html.escape(name)}</span><small>{what}</small></a>')
    fails = "".join(f"<li>{html.escape(n)}: {html.escape(r)}</li>" for n, r in failed)
    model = html.escape(entries[0][2].model_name) if entries else ""
    text = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
            f"<title>vitlens explorer: {len(entries)} images</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>"
            "body{font:14px system-ui,sans-serif;margin:16px}.grid{display:flex;flex-wrap:wrap;gap:12px}"
            ".card{display:flex;flex-direction:column;width:170px;text-decoration:none;color:#222;border:1px solid #ccd;"
            "border-radius:6px;padding:5px}.card img{width:160px;height:160px;object-fit:contain;background:#eee}"
            ".card span{overflow-wrap:anywhere}.card small{color:#555}</style>\n</head>\n<body>\n"
            f"<h1>vitlens explorer</h1><p>{len(entries)} page(s), model {model}. Click an image to explore its attention.</p>\n"
            + (f'<p><a href="{html.escape(global_href, quote=True)}" data-role="global">Queries and keys of all '
               f'images</a>: a joint embedding per layer and head.</p>\n' if global_href else "")
            +
            f"<div class=\"grid\">{''.join(cards)}</div>\n"
            + (f"<h2>Could not be read</h2><ul>{fails}</ul>\n" if failed else "")
            + "</body>\n</html>\n")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def _jpeg_uri(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_global(path: str | os.PathLike[str], data: "GlobalData") -> Path:
    """The query/key view (``explorer_global.js``) as one self-contained page."""
    body = {
        "model": data.model_name, "prefix": list(data.prefix_names), "grid": list(data.grid),
        "tokens": len(data.prefix_names) + data.grid[0] * data.grid[1],
        "images": [{"name": n, "href": h, "thumb": _jpeg_uri(t)} for n, h, t in zip(data.names, data.hrefs, data.thumbs)],
        "layers": [{"layer": layer, "heads": hs, "emb": encode_array(c, "f16"),
                    "explained": [[round(float(v), 4) for v in row] for row in e]}
                   for layer, hs, c, e in zip(data.layers, data.heads, data.coords, data.explained)],
    }
    uid = f"vlx-{uuid.uuid4().hex[:12]}"
    text = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
            f"<title>{html.escape(data.model_name)}: queries and keys - vitlens</title>\n"
            "<link rel=\"icon\" href=\"data:,\">\n</head>\n<body>\n"
            f'<style>{_asset("explorer.css")}</style>\n<div class="vlx" id="{uid}"></div>\n'
            f'<script type="application/json" id="{uid}-data">{_json_for_script(body)}</script>\n'
            f'<script>(function () {{\n{_asset("explorer_global.js")}\n'
            f'vitlensGlobal(document.getElementById("{uid}"), JSON.parse(document.getElementById("{uid}-data").textContent));\n'
            "})();</script>\n</body>\n</html>\n")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p
