"""``vitlens explore``: interactive attention explorer pages (self-contained HTML)."""
from __future__ import annotations

from pathlib import Path

import click

from .common import Progress, handle_errors, load_cli_model, model_options, warn_failed


def _int_list(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated integers, e.g. 0,5,-1", param_hint=flag) from None
    if not out:
        raise click.BadParameter("is empty; leave it out to include all", param_hint=flag)
    return out


def _methods(value: str | None) -> list[str]:
    from vitlens.analysis.explain import check_method

    names = [v.strip() for v in (value or "").split(",") if v.strip()]
    for n in names:
        try:
            check_method(n)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--methods") from None
    return names


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@model_options()
@click.option("--out", "out", type=click.Path(), default=None,
              help="Page to write for one image (default: <image name>_explorer.html); for a folder, list "
                   "file or glob: the folder for the pages and index.html (default: vitlens-explore).")
@click.option("--methods", default=None, metavar="M1,M2",
              help="vitlens.explain methods to add as tabs, e.g. chefer,grad-rollout (class-specific ones "
                   "for each of the --top-k classes). Rollout and attention received are always there.")
@click.option("--layers", default=None, metavar="L1,L2",
              help="Layers to include (comma-separated, negative counts from the end). Default: all.")
@click.option("--heads", default=None, metavar="H1,H2", help="Heads to include. Default: all.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True,
              help="Predicted classes listed and offered to the class picker.")
@click.option("--precision", type=click.Choice(["uint8", "float16"]), default="uint8", show_default=True,
              help="Attention storage: uint8 (per-row scaled; ViT-B/16 at 224 px ~8 MB) or float16 (twice that).")
@click.option("--colormap", default="jet", show_default=True, help="OpenCV colormap name.")
@click.option("--max-image-side", type=click.IntRange(16), default=None,
              help="Shrink the embedded photo to this longer side (default: original resolution).")
@click.option("--global-view/--no-global-view", default=True, show_default=True,
              help="For several images: also write global.html, a joint embedding (PCA) of every image's query "
                   "and key vectors per layer and head whose points link to the pages (ViT family).")
@handle_errors
def explore(input_path, model_name, checkpoint, pretrained, device, debug, out, methods, layers, heads, top_k,
            precision, colormap, max_image_side, global_view):
    """Write an interactive attention explorer for INPUT: click a patch to see where it looks,
    in every layer and head.

    INPUT is one image (writes one page) or a folder, list file or quoted glob (writes one
    page per image and an index.html gallery into --out). Each page is a single HTML file
    with everything inline (no network, no server): open it in any browser.
    """
    from vitlens.capture import adapter_for
    from vitlens.data import LIST_SUFFIXES, resolve_inputs
    from vitlens.explore import explore as explore_one, explore_folder
    from vitlens.export.explorer import check_options

    method_list = _methods(methods)
    layer_list, head_list = _int_list(layers, "--layers"), _int_list(heads, "--heads")
    check_options(precision=precision, colormap=colormap, max_image_side=max_image_side)
    src = Path(input_path)
    single = src.is_file() and src.suffix.lower() not in LIST_SUFFIXES
    if not single:
        resolve_inputs(input_path)   # nothing to explore: fail before loading the model
    model, cfg = load_cli_model(model_name, checkpoint, pretrained, device)
    adapter_for(model)
    options = dict(layers=layer_list, heads=head_list, methods=method_list, top_k=top_k, precision=precision,
                   colormap=colormap, max_image_side=max_image_side)
    if single:
        dest = Path(out) if out else Path(f"{src.stem}_explorer.html")
        enc = {k: options.pop(k) for k in ("precision", "colormap", "max_image_side")}
        ex = explore_one((model, cfg), src, **options, **enc)
        path = ex.save(dest)
        top = ex.data.classes[0]
        click.echo(f"{src}: {top['name']} {top['prob']:.3f}")
        click.echo(f"  wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return
    dest = Path(out) if out else Path("vitlens-explore")
    if dest.suffix.lower() in (".html", ".htm"):
        raise click.BadParameter(f"INPUT '{input_path}' holds several images, so --out is a folder (it gets one page "
                                 f"per image and index.html), not '{dest}'", param_hint="--out")
    total = len(resolve_inputs(input_path).paths)
    with Progress(total=total, label="explore") as bar:
        res = explore_folder((model, cfg), input_path, dest, global_view=global_view,
                             progress=lambda done, n: bar.update(done - bar.done), **options)
    warn_failed(res.failed)
    click.echo(f"wrote {len(res.pages)} page(s) and {dest / 'index.html'}"
               + (f" and {res.global_page}" if res.global_page else ""))
    if res.global_note:
        click.echo(f"vitlens: notice: no global view: {res.global_note}", err=True)
    if res.failed:
        raise SystemExit(1)
