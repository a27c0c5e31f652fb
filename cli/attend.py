"""``vitlens attend``: overlay PNGs of any ``vitlens.explain`` map (CLS attention, rollout, gradient
methods, captum baselines, random), plus top-5 predictions."""
from __future__ import annotations

import os
import re
from pathlib import Path

import click

from vitlens._util import model_device
from vitlens.analysis.registry import methods as registered_methods

# --method choices, help and the class-agnostic set come from the method registry
_METHODS = registered_methods()
EXPLAIN_METHODS = tuple(m.name for m in _METHODS)
CLASS_AGNOSTIC = tuple(m.name for m in _METHODS if not m.class_specific)
_METHOD_HELP = "; ".join(f"{m.name}: {m.summary.replace('`', '')}" for m in _METHODS)

from vitlens.export.overlay import DEFAULT_COLORMAP

from .common import (EXIT_UNREADABLE, model_label as _model_label, random_weights, check_output, fail, geometry, handle_errors,
                     load_cli_model, max_pixels_option, model_options, one_line, warn_small)


def _head_option(value: str) -> str | int | None:
    if value in ("mean", "max", "min"):
        return value
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use mean, max, min, all, or a head index") from None


def _target_option(value: str | None, names: list[str] | None) -> int | None:
    """--target: a class index, or a class name of the model."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    if names and value in names:
        return names.index(value)
    import difflib

    close = difflib.get_close_matches(value, names or [], n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise click.BadParameter(f"{value!r} is neither a class index nor a class name of this model{hint}",
                             param_hint="--target")


def _describe(method: str, layer: int | None, head: str, discard_ratio: float) -> str:
    """The map in words, for the title strip."""
    if method == "cls":
        heads = {"all": "every head", "mean": "heads mean", "max": "heads max", "min": "heads min"}
        return f"CLS attention, layer {layer}, {heads.get(head, f'head {head}')}"
    if method == "rollout":
        return f"rollout (heads {head}" + (f", discard {discard_ratio:g})" if discard_ratio else ")")
    if method == "gradcam":
        return f"Grad-CAM, block {layer}"
    return {"random": "random baseline map", "grad-rollout": "grad-rollout", "chefer": "Chefer et al. 2021",
            "ig": "integrated gradients", "input-x-gradient": "input x gradient"}.get(method, method)


def _crops(box, size) -> bool:
    """The model's input box leaves part of the image out (that part is dimmed)."""
    x0, y0, x1, y1 = box
    w, h = size
    return x0 > 0.5 or y0 > 0.5 or x1 < w - 0.5 or y1 < h - 0.5


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_options()
@click.option("--method", type=click.Choice(list(EXPLAIN_METHODS)), default="cls", show_default=True,
              help=f"{_METHOD_HELP}. See docs/methods.md.")
@click.option("--target", default=None, metavar="N",
              help=f"Class to explain (index or class name) for the class-specific methods "
                   f"({', '.join(m for m in EXPLAIN_METHODS if m not in CLASS_AGNOSTIC)}). "
                   f"Default: the predicted class.")
@click.option("--layer", type=int, default=-1, show_default=True,
              help="Layer for --method cls and gradcam (negative counts from the end).")
@click.option("--head", default="mean", show_default=True,
              help="mean | max | min | a head index | all (a grid of every head; --method cls). "
                   "For rollout: the head fusion.")
@click.option("--discard-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Rollout: zero this fraction of the lowest attention entries per layer.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="vitlens-out", show_default=True,
              help="Folder for the overlay PNGs (created).")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--colormap", default=DEFAULT_COLORMAP, show_default=True,
              help="OpenCV colormap name (inferno, viridis, magma, cividis, jet, turbo, ...); the default is "
                   "perceptually uniform, as in the docs' figures.")
@click.option("--annotate/--no-annotate", "annotate_", default=True, show_default=True,
              help="Frame each overlay with a title strip (model, method, layer, head, class), a colour bar "
                   "and a legend; --no-annotate writes the bare overlay at the image's size.")
@click.option("--contours/--no-contours", default=True, show_default=True,
              help="Outline the hottest quarter of the map's range, visible on any background.")
@click.option("--alpha-by-value", is_flag=True,
              help="Weight the colour by the map's value: low values leave the photo untouched.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing files in --out; without it an existing name gets a -2, -3 ... suffix.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True, help="Predictions to print.")
@max_pixels_option
@handle_errors
def attend(images, model_name, checkpoint, pretrained, device, debug, method, target, layer, head,
           discard_ratio, out_dir, alpha, colormap, annotate_, contours, alpha_by_value, overwrite, top_k):
    """Draw where the model attends in IMAGES (or, with a gradient --method, what its
    decision for a class relies on) and print its top predictions.

    Each of IMAGES is an image, a folder (searched recursively), a list file (.txt, one
    path per line) or a quoted glob pattern.

    Writes one overlay PNG per image into --out (the map drawn over the original image,
    at its original resolution; the part the model's centre crop did not see is dimmed;
    maps are min-max scaled, so the lowest value gets the colormap's low end), framed by
    a title strip, a colour bar and a legend unless --no-annotate. File names say what
    the map is, e.g. `chelsea__demo__cls_L5_hmean.png` (image, model, method, layer, head, then
    settings such as `_discard0.9` and the class explained as `_t-cat`), the scheme
    `export --overlays` uses too; an existing file is never replaced unless
    --overwrite.
    Class-specific methods also print the class they explain.
    Unreadable images are reported one line each on stderr and skipped; the exit status
    is then 3 (as for every command), after the readable ones were drawn.
    """
    import torch

    import vitlens
    from vitlens.capture import adapter_for, require_logits
    from vitlens.errors import UnsupportedModelError
    from vitlens.export.overlay import (COLORMAPS, DEFAULT_CONTOURS, annotate, fresh_path, overlay, overlay_name,
                                        save_png)

    head_sel = _head_option(head)
    if head_sel is None and method != "cls":
        raise click.BadParameter("--head all draws per-head CLS maps; use it with --method cls", param_hint="--head")
    if target is not None and method in CLASS_AGNOSTIC:
        raise click.BadParameter(f"the --method {method} map does not depend on the class; --target applies to "
                                 f"{', '.join(m for m in EXPLAIN_METHODS if m not in CLASS_AGNOSTIC)}",
                                 param_hint="--target")
    if colormap.lower() not in COLORMAPS:
        overlay(torch.zeros(2, 2, 3, dtype=torch.uint8).numpy(), [[0.0]], colormap=colormap)  # raises the helpful error
    check_output(out_dir, "--out", folder=True)
    _check_indices(model_name, method, layer, head_sel)
    image_paths = _expand(images)

    model, cfg = load_cli_model(model_name, checkpoint, pretrained, device)
    model_label = _model_label(model_name, model, checkpoint)
    random = random_weights(model, checkpoint, pretrained)
    adapter = adapter_for(model)  # unsupported architecture: fail before decoding any image
    try:
        require_logits(model)
    except UnsupportedModelError as e:  # a tower's encoder (*_enc): no predictions to print or explain
        fail(f"{one_line(e)}; vitlens attend prints predictions and explains them, so it cannot run on this "
             f"model: vitlens export (rollout, distance) and vitlens distance show its attention")
    if method == "cls" and not adapter.describe().has_cls:
        fail(f"{model_label} has no CLS token, so --method cls (the default) has no map to draw; use "
             f"--method rollout or a gradient method")
    dev = model_device(model)
    names = vitlens.class_names(model)
    target_idx = _target_option(target, names)
    given = {"layer": layer, "head": head_sel, "discard_ratio": discard_ratio}
    accepted = next(m for m in _METHODS if m.name == method).defaults
    options = {k: v for k, v in given.items() if k in accepted}

    loaded, failed = [], 0
    for path in image_paths:
        if isinstance(path, Exception):  # a folder or pattern that holds no image
            click.echo(f"vitlens: error: {path}", err=True)
            failed += 1
            continue
        try:
            img = vitlens.load_image(path)
        except vitlens.ImageLoadError as e:
            if debug or os.environ.get("VITLENS_DEBUG") == "1":
                raise
            from .flags import to_flags

            click.echo(f"vitlens: error: {to_flags(str(e))}", err=True)
            failed += 1
            continue
        warn_small(str(path), img.size, cfg)
        loaded.append((str(path), img, vitlens.preprocess(img, cfg)))
    if not loaded:
        raise SystemExit(EXIT_UNREADABLE)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    batch_size = 16
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start:start + batch_size]
        x = torch.stack([p.tensor for _, _, p in chunk]).to(dev)
        res = vitlens.explain(model, x, method, target=target_idx, details=True, **options)
        probs = res.logits.float().softmax(-1).cpu()
        for i, (path, img, pre) in enumerate(chunk):
            t = int(res.target[i])
            t_name = names[t] if names and t < len(names) else str(t)
            pred = int(probs[i].argmax())
            pred_name = names[pred] if names and pred < len(names) else str(pred)
            m = res.maps[i].cpu()
            layer_used = res.options.get("layer") if method in ("cls", "gradcam") else None
            head_tag = head if method in ("cls", "rollout") else None
            settings = {"discard": discard_ratio} if method == "rollout" and discard_ratio else {}
            name = overlay_name(path, model_label, method, layer=layer_used,
                                head=None if head_sel is None else head_tag, settings=settings,
                                target=None if method in CLASS_AGNOSTIC else t_name,
                                suffix="heads" if head_sel is None else "")
            dest = fresh_path(out / name, overwrite, taken)
            what = _describe(method, layer_used, head, discard_ratio)
            title = (f"{model_label}{' (RANDOM WEIGHTS)' if random else ''} | {what}"
                     + ("" if method in CLASS_AGNOSTIC else f" | explains: {t_name}")
                     + f" | predicted: {pred_name} {float(probs[i, pred]):.2f}")
            if head_sel is None:
                from vitlens import pl
                from vitlens.export.figures import save_figure

                fig = pl.heads(m, image=img, box=pre.box, colormap=colormap, alpha=alpha, fused=m.mean(0),
                               title=None if not annotate_ else f"{Path(path).name}: {title}")
                save_figure(fig, dest)
            else:
                shown, box = img, pre.box
                if annotate_ and img.size[0] < 360:  # a 32x32 CIFAR image: draw at a readable size, sharp pixels
                    from PIL import Image

                    f = -(-360 // img.size[0])
                    shown = img.resize((img.size[0] * f, img.size[1] * f), Image.NEAREST)
                    box = tuple(v * f for v in pre.box)
                pic = overlay(shown, m, box=box, colormap=colormap, alpha=alpha,
                              contours=DEFAULT_CONTOURS if contours else (), alpha_by_value=alpha_by_value)
                if annotate_:
                    lo, hi = float(m.min()), float(m.max())
                    cropped = _crops(pre.box, img.size)
                    pic = annotate(pic, title=title, colormap=colormap, low=f"{lo:.3g}", high=f"{hi:.3g}",
                                   legend="; ".join(([ "dimmed: outside the model's centre crop"] if cropped else [])
                                                    + (["contour: top 25%"] if contours else [])) or None)
                save_png(dest, pic)
            p, idx = probs[i].topk(min(top_k, probs.shape[-1]))
            preds = ", ".join(f"{names[j] if names else j} {q:.3f}" for q, j in zip(p.tolist(), idx.tolist()))
            click.echo(f"{path}: {preds}")
            if method not in CLASS_AGNOSTIC:
                click.echo(f"  explains: {t_name} (class {t}, p={float(probs[i, t]):.3f})")
            click.echo(f"  wrote {dest}")
    if failed:
        click.echo(f"vitlens: {failed} of {len(image_paths)} input(s) could not be read", err=True)
        raise SystemExit(EXIT_UNREADABLE)


def _expand(specs: tuple[str, ...]) -> list:
    """Every IMAGES argument as image paths: folders, list files and globs expanded
    (vitlens.data.resolve_inputs); a plain path is kept as given, so a missing file is
    reported as unreadable. A folder or pattern without images becomes the error itself."""
    from vitlens.data import LIST_SUFFIXES, resolve_inputs

    out: list = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir() or (p.is_file() and p.suffix.lower() in LIST_SUFFIXES) or (
                not p.exists() and re.search(r"[*?\[]", spec)):
            try:
                out.extend(resolve_inputs(spec).paths)
            except ValueError as e:
                out.append(e)
        else:
            out.append(spec)
    return out


def _check_indices(model_name: str | None, method: str, layer: int, head: str | int | None) -> None:
    """--layer and --head against the architecture, before any weights are loaded."""
    geo = geometry(model_name)
    if geo is None:
        return
    if method == "cls":
        lay = geo.layer(layer)
        if isinstance(head, int):
            geo.head(head, [lay])
    elif method == "gradcam" and geo.gradcam_blocks is not None:
        geo.layer(layer, n=geo.gradcam_blocks, what=geo.gradcam_what)
    elif method == "rollout" and isinstance(head, int):
        geo.head(head)
