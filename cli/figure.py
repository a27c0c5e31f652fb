"""``vitlens figure``: draw a figure from an export file (no model is run)."""
from __future__ import annotations

from pathlib import Path

import click

from vitlens.errors import VitlensError

from .common import check_output, check_plot_path, handle_errors

KINDS = ("distance", "cls-grid", "rollout-grid")


def parse_rows(spec: str | None, n: int) -> list[int] | None:
    """``"0,3,5"``, ``"0:8"``, ``"10:"``, ``"-1"`` -> row indices (None: not given)."""
    if spec is None:
        return None
    out: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        try:
            bounds = [int(v) if v else None for v in part.split(":", 1)]
        except ValueError:
            raise VitlensError(f"--rows {part!r}: use row numbers and ranges like 0,3,5 or 0:8") from None
        if len(bounds) == 2:
            out.extend(range(*slice(*bounds).indices(n)))
            continue
        i = bounds[0]
        if i is None or not -n <= i < n:
            raise VitlensError(f"--rows: row {i} is out of range: the file has {n} committed rows "
                               f"(0..{n - 1}, or negative from the end)")
        out.append(i % n)
    if not out:
        raise VitlensError(f"--rows {spec!r} selects no row (the file has {n} rows)")
    return out


@click.command()
@click.argument("path", metavar="OUTPUT.h5", type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(KINDS), required=True,
              help="distance: mean attention distance vs depth (every head, mean and std over the rows); "
                   "cls-grid: CLS attention per layer (rows x layers); rollout-grid: rollout maps.")
@click.option("--rows", default=None, metavar="LIST",
              help="Rows to draw, e.g. 0,3,5 or 0:8. Default: distance all ok rows; grids the first 8 ok rows.")
@click.option("--head", default="mean", show_default=True,
              help="cls-grid: fuse heads by mean/max/min, or a head index.")
@click.option("--images/--no-images", default=True, show_default=True,
              help="Grids: overlay the maps on the original images when they are still at their paths.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Figure file: .png, .pdf or .svg.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@handle_errors
def figure(path, kind, rows, head, images, out, debug):
    """Draw a figure from OUTPUT.h5 written by `vitlens export`.

    Failed rows (images/ok false) are skipped unless named in --rows, where they show as
    "no data".
    """
    import numpy as np

    from vitlens.export import figures
    from vitlens.export.hdf5 import read

    check_plot_path(out, option="--out")
    check_output(out, "--out")
    with read(path) as f:
        if f.rows == 0:
            raise VitlensError(f"'{path}' holds no committed rows yet; nothing to draw")
        ok = f.ok
        chosen = parse_rows(rows, f.rows)
        dataset = {"distance": "attention_distance", "cls-grid": "cls_attention", "rollout-grid": "rollout"}[kind]
        if dataset not in f:
            why = f.attrs.get("cls_attention_omitted") if dataset == "cls_attention" else None
            raise VitlensError(f"'{path}' has no {dataset} dataset"
                                   + (f" ({why})" if why else "")
                                   + f"; export it with --analyses including "
                                   f"{ {'attention_distance': 'distance', 'cls_attention': 'cls', 'rollout': 'rollout'}[dataset]}")
        if chosen is None:
            good = np.flatnonzero(ok)
            if not good.size:
                raise VitlensError(f"every row of '{path}' failed (images/ok is false); nothing to draw")
            chosen = good.tolist() if kind == "distance" else good[:8].tolist()
        data = np.asarray(f[dataset][chosen], dtype=np.float64)
        labels = [f["images/path"][i] for i in chosen]
        model = f.attrs.get("model")
        if kind == "distance":
            fig = figures.distance_vs_depth(data, title=f"{model}: mean attention distance ({len(chosen)} images)")
        else:
            pics, boxes = (None, None)
            if images:
                pics, boxes = _originals(f, labels)
            if kind == "cls-grid":
                if head in ("mean", "max", "min"):
                    maps = {"mean": np.mean, "max": np.max, "min": np.min}[head](data, axis=2)  # NaN rows stay NaN
                else:
                    try:
                        h = int(head)
                    except ValueError:
                        raise VitlensError(f"--head {head!r}: use mean, max, min or a head index") from None
                    if not -data.shape[2] <= h < data.shape[2]:
                        raise VitlensError(f"--head {h} is out of range: the file has {data.shape[2]} heads")
                    maps = data[:, :, h]
                fig = figures.cls_grid(maps, pics, boxes=boxes, row_labels=labels,
                                       title=f"{model}: CLS attention per layer (heads: {head})")
            else:
                fig = figures.rollout_grid(data, pics, boxes=boxes, labels=labels, title=f"{model}: attention rollout")
    figures.save_figure(fig, out)
    click.echo(f"wrote {out}")


def _originals(f, rel_paths: list[str]):
    """The original photos (and the boxes the maps cover) when they are still where the export read them."""
    from vitlens.data import load_image
    from vitlens.errors import ImageLoadError
    from vitlens.models import input_box

    root = f.attrs.get("input_root")
    cfg = f.config.get("data_config") or {}
    if not root or not cfg:
        return None, None
    pics, boxes = [], []
    for rel in rel_paths:
        p = Path(rel) if Path(rel).is_absolute() else Path(root) / rel
        try:
            img = load_image(p)
        except ImageLoadError:
            pics.append(None)
            boxes.append(None)
            continue
        pics.append(img)
        boxes.append(input_box(img.size, cfg))
    if all(p is None for p in pics):
        return None, None
    return pics, boxes
