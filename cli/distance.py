"""``vitlens distance``: mean attention distance (and entropy) per layer and head over a dataset."""
from __future__ import annotations

import json

import click

from vitlens.errors import VitlensError

from .common import (EXIT_UNREADABLE, RANDOM_WEIGHTS_NOTE, random_weights, FailedItems, Progress, check_output, check_plot_path, fail, geometry,
                     handle_errors, load_cli_model, max_pixels_option, model_options, warn_failed, warn_small_inputs, write_plot_late)

#: Warning lines about skipped files printed before summarising the rest.
_MAX_SKIP_LINES = 10


def _parse_layers(value: str | None) -> list[int] | None:
    if value is None or value.strip().lower() in ("", "all"):
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise VitlensError(f"--layers {value!r}: give layer indices separated by commas, e.g. 0,5,-1, "
                           f"or 'all'") from None


@click.command()
@click.argument("input_spec", metavar="INPUT")
@model_options()
@click.option("--layers", default=None, metavar="LIST",
              help="Layers to measure, comma-separated (negative counts from the end), e.g. 0,5,-1. Default: all.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Image-decoding worker processes.")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N", help="Use only the first N images.")
@click.option("--json", "as_json", is_flag=True,
              help="Print per-layer and per-head mean and std (distance and entropy), image counts and "
                   "parameters as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the distance-vs-depth figure (.pdf, .png or .svg).")
@click.option("--quiet", is_flag=True, help="No progress bar and no skipped-file warnings.")
@max_pixels_option
@handle_errors
def distance(input_spec, model_name, checkpoint, pretrained, device, debug, layers, batch_size, workers, limit,
             as_json, plot_path, quiet):
    """Mean attention distance per layer and head over the images in INPUT.

    INPUT is an image, a folder (recursive), a list file (.txt/.lst/.list, one path per
    line) or a quoted glob. For every head: the attention-weighted distance between patch
    centres in input pixels, patch tokens only (Dosovitskiy et al. 2021, Fig. 7), and the
    attention entropy in nats; mean and std over images (docs/heads.md). The table shows,
    per layer, mean ± std over heads and images. Unreadable files are skipped, counted
    and reported on stderr, and the exit status is 3.
    """
    from vitlens.analysis.distance import head_statistics
    from vitlens.data import image_batches, resolve_inputs

    layer_list = _parse_layers(layers)
    check_plot_path(plot_path)
    check_output(plot_path, "--plot")
    geo = geometry(model_name)
    if geo is not None and layer_list is not None:
        for v in layer_list:
            geo.layer(v, option="--layers")
    inputs = resolve_inputs(input_spec)
    paths = inputs.paths[:limit] if limit is not None else inputs.paths
    model, data_config = load_cli_model(model_name, checkpoint, pretrained, device)

    batches = FailedItems(image_batches(paths, data_config, batch_size=batch_size, workers=workers), inputs.root,
                          data_config=data_config)
    failures = batches.failed
    with Progress(total=len(paths), label="distance", quiet=quiet) as bar:
        stats = head_statistics(model, batches, layers=layer_list, progress=bar.update)
    dist, ent = stats["distance"], stats["entropy"]

    if dist.images == 0:
        first = f"; first: {failures[0][0]}: {failures[0][1]}" if failures else ""
        fail(f"none of the {len(paths)} input image(s) could be read{first}", EXIT_UNREADABLE)
    if not quiet:
        warn_failed(failures, limit=_MAX_SKIP_LINES)
        warn_small_inputs(batches.small, data_config, len(paths))

    name = model_name or dist.params.get("model", "")

    if as_json:
        payload = {
            "model": name,
            "checkpoint": checkpoint,
            "input": str(input_spec),
            "images": {"total": len(paths), "ok": dist.images, "failed": dist.failed},
            "failed": [{"path": p, "error": e} for p, e in failures],
            "params": dist.params,
            "std": "population std over images (ddof=0); per-layer std pools heads and images",
            "distance": {k: v for k, v in dist.to_dict().items() if k not in ("params", "images")},
            "entropy": {k: v for k, v in ent.to_dict().items() if k not in ("params", "images")},
        }
        if random_weights(model, checkpoint, pretrained):
            payload["warning"] = RANDOM_WEIGHTS_NOTE
        click.echo(json.dumps(payload, indent=2, allow_nan=False))
    else:
        p = dist.params
        click.echo(f"model {name}: {dist.images} image(s) ok, {dist.failed} failed; input "
                   f"{p['input_size'][0]}x{p['input_size'][1]}, patch {p['patch_size'][0]}x{p['patch_size'][1]}, "
                   f"grid {p['grid_size'][0]}x{p['grid_size'][1]}, prefix tokens: "
                   f"{', '.join(p['prefix_tokens']) or 'none'}")
        dmean, dstd = dist.layer_summary()
        emean, estd = ent.layer_summary()
        click.echo(f"{'layer':>5}  {'distance (px)':>18}  {'entropy (nats)':>16}")
        for i, layer in enumerate(dist.layers):
            click.echo(f"{layer:>5}  {float(dmean[i]):>9.2f} ± {float(dstd[i]):<6.2f}  "
                       f"{float(emean[i]):>7.3f} ± {float(estd[i]):.3f}")
        click.echo("mean ± std over heads and images; per-head values with --json")
    write_plot_late(plot_path, lambda pl: pl.head_statistics(
        dist, title=f"{name}: {dist.images} image{'' if dist.images == 1 else 's'}"))
    if failures:
        raise SystemExit(EXIT_UNREADABLE)
