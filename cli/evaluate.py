"""``vitlens evaluate``: faithfulness metrics (deletion, insertion, positive/negative perturbation) of map methods."""
from __future__ import annotations

import json

import click

from vitlens.analysis.registry import methods as registered_methods
from vitlens.errors import VitlensError

from .common import (EXIT_UNREADABLE, RANDOM_WEIGHTS_NOTE, random_weights, FailedItems, Progress, check_output, check_plot_path, handle_errors,
                     load_cli_model, max_pixels_option, model_options, warn_failed, warn_small_inputs, write_plot_late)


def split_names(value: str | None) -> list[str] | None:
    """``"a,b c"`` -> ``["a", "b", "c"]``; None stays None."""
    if value is None:
        return None
    names = [v for v in value.replace(",", " ").split() if v]
    if not names:
        raise VitlensError(f"expected a comma-separated list of names, got {value!r}")
    return names


def read_inputs(input_spec: str, loaded, with_labels: bool, batch_size: int, limit: int | None = None):
    """(inputs, labels or None, FailedItems iterator) for a command-line INPUT."""
    from vitlens.data import image_batches, labels_from_folders, resolve_inputs
    from vitlens.models import class_names

    inputs = resolve_inputs(input_spec)
    labels = None
    if with_labels:
        names = class_names(loaded.model)
        labels = labels_from_folders(inputs.paths, names)
    batches = FailedItems(image_batches(inputs.paths, loaded.data_config, batch_size=batch_size), inputs.root, limit,
                          data_config=loaded.data_config)
    return inputs, labels, batches


@click.command("evaluate")
@click.argument("input_spec", metavar="INPUT")
@model_options()
@click.option("--labels", "with_labels", is_flag=True,
              help="Take each image's true class from its parent folder's name (must be a class of the model). "
                   "Without it, 'correct' in the perturbation tests means 'as predicted on the clean image'.")
@click.option("--methods", default="rollout,random", show_default=True,
              help="Comma-separated explain methods, from: "
                   + ", ".join(m.name for m in registered_methods()) + " (see `vitlens attend --help`).")
@click.option("--metrics", default=None,
              help="Comma-separated: deletion, insertion, positive, negative, positive_drop, negative_drop. "
                   "Default: all that apply to the model.")
@click.option("--target", type=click.Choice(["predicted", "label"]), default="predicted", show_default=True,
              help="Class each map explains and deletion/insertion track ('label' needs --labels).")
@click.option("--baseline", type=click.Choice(["blur", "mean", "zero"]), default=None,
              help="Value of removed patches for every pixel metric. Default: the papers' (zero; insertion blur).")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Deletion/insertion steps (default: one patch per step).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate at most N images (the first ones).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random baseline.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result (values, errors, curves) as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the curves (.pdf, .png or .svg).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@max_pixels_option
@handle_errors
def evaluate(input_spec, model_name, checkpoint, pretrained, device, debug, with_labels, methods, metrics, target,
             baseline, steps, limit, batch_size, seed, as_json, plot_path, quiet):
    """Faithfulness of attention/attribution maps on the images in INPUT.

    INPUT is an image, a folder (recursive), a list file or a quoted glob. Prints a table
    of AUCs (deletion/insertion: Petsiuk et al. 2018; positive/negative perturbation and
    their token-drop variants: Chefer et al. 2021), mean ± standard error over images;
    docs/faithfulness.md defines each one. Unreadable files are skipped with a warning
    and the exit status is 3 (the table covers the others).
    """
    from vitlens.analysis.faithfulness import evaluate as run_evaluate

    check_plot_path(plot_path)
    check_output(plot_path, "--plot")
    method_list = split_names(methods)
    metric_list = split_names(metrics)
    if target == "label" and not with_labels:
        raise VitlensError("--target label needs --labels (true classes from the folder names)")
    loaded = load_cli_model(model_name, checkpoint, pretrained, device)
    inputs, labels, batches = read_inputs(input_spec, loaded, with_labels, batch_size, limit)
    total = len(inputs.paths) if limit is None else min(limit, len(inputs.paths))
    with Progress(total=total, label="evaluate", quiet=quiet) as bar:
        result = run_evaluate(loaded.model, batches, labels, methods=method_list, metrics=metric_list,
                              target_source=target, baseline=baseline, steps=steps, limit=limit, seed=seed,
                              progress=bar.update)
    warn_failed(batches.failed)
    warn_small_inputs(batches.small, loaded.data_config, total)
    if as_json:
        payload = result.to_dict()
        if random_weights(loaded.model, checkpoint, pretrained):
            payload["warning"] = RANDOM_WEIGHTS_NOTE
        payload.update({"model": model_name, "input": str(input_spec),
                        "skipped": [{"path": p, "reason": r} for p, r in batches.failed]})
        click.echo(json.dumps(payload, indent=2, allow_nan=False))
    else:
        ref = "true labels" if result.params["reference"] == "labels" else "the clean prediction"
        click.echo(f"{result.n_images} images ({len(batches.failed)} skipped); target: {target} class; "
                   f"perturbation accuracy against {ref}; AUC mean ± s.e.")
        click.echo(result.table())
    write_plot_late(plot_path, lambda pl: pl.faithfulness(result))
    if batches.failed:
        raise SystemExit(EXIT_UNREADABLE)
