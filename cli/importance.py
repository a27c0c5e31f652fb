"""``vitlens importance``: token importance and the accuracy-vs-keep-ratio curve (top-k patch tokens only)."""
from __future__ import annotations

import json

import click

from vitlens.errors import VitlensError

from .common import (EXIT_UNREADABLE, RANDOM_WEIGHTS_NOTE, random_weights, Progress, check_output, check_plot_path, handle_errors, load_cli_model,
                     max_pixels_option, model_options, warn_failed, warn_small_inputs, write_plot_late)
from .evaluate import read_inputs


def _ratios(value: str) -> list[float]:
    try:
        out = [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise VitlensError(f"--ratios must be comma-separated fractions in (0, 1], got {value!r}") from None
    if not out:
        raise VitlensError(f"--ratios must be comma-separated fractions in (0, 1], got {value!r}")
    return out


@click.command("importance")
@click.argument("input_spec", metavar="INPUT")
@model_options()
@click.option("--method", default="rollout", show_default=True,
              help="Token score: an explain method (cls, rollout, random, gradient methods if installed) "
                   "or 'received' (mean attention each token receives in the last layer).")
@click.option("--labels", "with_labels", is_flag=True,
              help="True class from each image's parent folder; without it accuracy means agreement with the "
                   "prediction on all tokens.")
@click.option("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0", show_default=True,
              help="Comma-separated keep ratios.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images (the first ones).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random-order baseline.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the curve and every image's token scores (row-major patches) as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the keep-ratio plot (.pdf, .png or .svg).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@max_pixels_option
@handle_errors
def importance(input_spec, model_name, checkpoint, pretrained, device, debug, method, with_labels, ratios, limit,
               batch_size, seed, as_json, plot_path, quiet):
    """Score patch tokens of the images in INPUT and keep only the top ones.

    Runs the ViT on the prefix tokens plus the top fraction of patch tokens by --method
    (position embeddings added before dropping) and prints top-1 accuracy at each keep
    ratio, against a random token order. timm VisionTransformer models (vit, deit,
    deit3, dinov2, clip, the demo); docs/faithfulness.md. Unreadable files are skipped
    with a warning and the exit status is 3.
    """
    from vitlens.analysis.importance import keep_ratio_curve

    check_plot_path(plot_path)
    check_output(plot_path, "--plot")
    ratio_list = _ratios(ratios)
    loaded = load_cli_model(model_name, checkpoint, pretrained, device)
    inputs, labels, batches = read_inputs(input_spec, loaded, with_labels, batch_size, limit)
    total = len(inputs.paths) if limit is None else min(limit, len(inputs.paths))
    with Progress(total=total, label="importance", quiet=quiet) as bar:
        curve = keep_ratio_curve(loaded.model, batches, labels, method=method, ratios=ratio_list, seed=seed,
                                 progress=bar.update)
    warn_failed(batches.failed)
    warn_small_inputs(batches.small, loaded.data_config, total)
    if as_json:
        payload = curve.to_dict()
        scores = curve.scores.tolist() if curve.scores is not None else []
        if random_weights(loaded.model, checkpoint, pretrained):
            payload["warning"] = RANDOM_WEIGHTS_NOTE
        payload.update({"model": model_name, "input": str(input_spec), "method": method,
                        "images": [{"path": p, "scores": [round(v, 7) for v in s]}
                                   for p, s in zip(batches.ok_paths, scores)],
                        "skipped": [{"path": p, "reason": r} for p, r in batches.failed]})
        click.echo(json.dumps(payload, indent=2, allow_nan=False))
    else:
        ref = "true labels" if curve.reference == "labels" else "the all-token prediction"
        click.echo(f"{curve.n_images} images ({len(batches.failed)} skipped); top-1 accuracy (%) against {ref}")
        click.echo(curve.table())
    write_plot_late(plot_path, lambda pl: pl.keep_ratio(curve))
    if batches.failed:
        raise SystemExit(EXIT_UNREADABLE)

