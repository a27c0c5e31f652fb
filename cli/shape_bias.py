"""``vitlens shape-bias``: shape-vs-texture bias on cue-conflict stimuli (Geirhos et al. 2019)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import click

from vitlens.errors import VitlensError

from .common import (EXIT_UNREADABLE, RANDOM_WEIGHTS_NOTE, check_output, random_weights, check_plot_path, handle_errors, load_cli_model,
                     max_pixels_option, model_options, write_late, write_plot_late)

#: Warning lines about skipped files printed before summarising the rest.
_MAX_SKIP_LINES = 10


def _warn(message: str) -> None:
    click.echo(f"vitlens: warning: {message}", err=True)


@click.command("shape-bias")
@click.argument("stimuli_dir", type=click.Path())
@model_options(multiple=True)
@click.option("--mapping", default=None, metavar="NAME|JSON",
              help="Category mapping for every model: 'imagenet16', 'cifar10', or a JSON file "
                   "{category: [class indices]}. Default: imagenet16 for 1000-class models, "
                   "cifar10 for the demo model.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Images per forward pass.")
@click.option("--no-texture-attention", is_flag=True,
              help="Skip the CLS-attention-on-high-texture-patches measurement.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the full result as JSON (a list when several models are given).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the per-image decisions (all models) to this CSV file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the per-category comparison plot (.pdf, .png or .svg).")
@max_pixels_option
@handle_errors
def shape_bias(stimuli_dir, model_names, checkpoints, pretrained, device, mapping, batch_size,
               no_texture_attention, as_json, csv_path, plot_path, debug):
    """Shape bias of one or more models on the cue-conflict stimuli in STIMULI_DIR.

    STIMULI_DIR holds <shape>/<shape><i>-<texture><j>.png (Geirhos et al. 2019,
    https://arxiv.org/abs/1811.12231). Shape bias = shape decisions / (shape + texture
    decisions), with the protocol of model-vs-human (docs/shape-bias.md). Prints one line
    per model; warnings (missing categories, skipped files) go to stderr. Stimuli that
    cannot be decoded are skipped and the exit status is 3.

    With several --model, give --checkpoint once per --model in the same order, or as
    MODEL=PATH for only the models that have one.
    """
    from vitlens.analysis.shape_bias import shape_bias as measure

    check_plot_path(plot_path)
    check_output(plot_path, "--plot")
    check_output(csv_path, "--csv")
    names = list(model_names) or [None]
    ckpts = _pair_checkpoints(names, list(checkpoints))

    results, random = [], []
    for name, ckpt in zip(names, ckpts):
        loaded = load_cli_model(name, ckpt, pretrained, device)
        random.append(random_weights(loaded.model, ckpt, pretrained))
        label = name
        if label is not None and ckpt is not None:
            label = f"{name} ({Path(ckpt).name})"
        results.append(measure(loaded, stimuli_dir, mapping, batch_size=batch_size,
                               texture_attention=not no_texture_attention, model_name=label))

    seen: set[str] = set()
    for r in results:
        if r.categories_missing:
            _warn(f"{r.model}: no stimuli for {len(r.categories_missing)} of the mapping's categories "
                  f"({', '.join(r.categories_missing)}); evaluated the others")
        new = [s for s in r.skipped if s.path not in seen]
        seen.update(s.path for s in new)
        for s in new[:_MAX_SKIP_LINES]:
            _warn(f"skipped {s.path}: {s.reason}")
        if len(new) > _MAX_SKIP_LINES:
            _warn(f"... and {len(new) - _MAX_SKIP_LINES} more skipped file(s) (see --json)")

    if as_json:
        payload = [r.to_dict() for r in results]
        for p, rnd in zip(payload, random):
            p["weights"] = "random" if rnd else "trained"
            if rnd:
                p["warning"] = RANDOM_WEIGHTS_NOTE
        click.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, allow_nan=False))
    else:
        for r in results:
            click.echo(r.summary())
    # the files after the results are on stdout: a failed write loses nothing
    if csv_path is not None:
        write_late(lambda: _write_csv(csv_path, results, random), csv_path, "--csv")
        click.echo(f"wrote {csv_path}", err=True)
    write_plot_late(plot_path, lambda pl: pl.shape_bias(results))
    if any(_unreadable(s.reason) for r in results for s in r.skipped):
        raise SystemExit(EXIT_UNREADABLE)


#: Reasons shape_bias gives for files it skips without trying to decode them (not errors).
_NOT_STIMULI = ("hidden file", "folder inside", "not an image file")


def _unreadable(reason: str) -> bool:
    return not reason.startswith(_NOT_STIMULI)


def _write_csv(csv_path: str, results, random: list[bool]) -> None:
    p = Path(csv_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "path", "shape", "texture", "decision", "outcome", "texture_share", "weights"])
        for r, rnd in zip(results, random):  # weights: "random" marks an untrained (random-init) model
            for d in r.decisions:
                w.writerow([r.model, d.path, d.shape, d.texture, d.decision or "", d.outcome,
                            "" if d.texture_share is None else f"{d.texture_share:.6f}", "random" if rnd else "trained"])


def _pair_checkpoints(names: list[str | None], checkpoints: list[str]) -> list[str | None]:
    """One checkpoint (or None) per --model: either one --checkpoint per --model in order, or
    ``--checkpoint MODEL=PATH`` for some of them."""
    if not checkpoints:
        return [None] * len(names)
    keyed = {}
    for c in checkpoints:
        key, sep, path = c.partition("=")
        if sep and key in names and not Path(c).exists():
            if key in keyed:
                raise VitlensError(f"--checkpoint {key}=... is given twice; give one checkpoint per model")
            keyed[key] = path
    if keyed:
        if len(keyed) != len(checkpoints):
            plain = [c for c in checkpoints if c.partition("=")[0] not in keyed]
            raise VitlensError(f"--checkpoint {plain[0]!r} names no --model; when some checkpoints are given as "
                               f"MODEL=PATH, give every one that way (models: {', '.join(map(str, names))})")
        return [keyed.get(n) if n is not None else None for n in names]
    if len(checkpoints) != len(names):
        raise VitlensError(f"got {len(checkpoints)} --checkpoint for {len(names)} --model; give one --checkpoint "
                           f"per --model in the same order, or MODEL=PATH for only the models that have one "
                           f"(e.g. --checkpoint {names[0]}=weights.safetensors)")
    return checkpoints
