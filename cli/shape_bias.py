"""``vitlens shape-bias``: shape-vs-texture bias on cue-conflict stimuli (Geirhos et al. 2019)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import click

from vitlens.errors import VitlensError

from .common import check_plot_path, handle_errors, load_cli_model, model_options

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
@handle_errors
def shape_bias(stimuli_dir, model_names, checkpoints, pretrained, device, mapping, batch_size,
               no_texture_attention, as_json, csv_path, plot_path, debug):
    """Shape bias of one or more models on the cue-conflict stimuli in STIMULI_DIR.

    STIMULI_DIR holds <shape>/<shape><i>-<texture><j>.png (Geirhos et al. 2019,
    https://arxiv.org/abs/1811.12231). Shape bias = shape decisions / (shape + texture
    decisions), with the protocol of model-vs-human (docs/shape-bias.md). Prints one line
    per model; warnings (missing categories, skipped files) go to stderr.
    """
    from vitlens.analysis.shape_bias import shape_bias as measure

    check_plot_path(plot_path)
    names = list(model_names) or [None]
    if checkpoints and len(checkpoints) != len(names):
        raise VitlensError(f"got {len(checkpoints)} --checkpoint for {len(names)} --model; give one "
                           f"--checkpoint per --model, in the same order, or none")
    ckpts = list(checkpoints) or [None] * len(names)

    results = []
    for name, ckpt in zip(names, ckpts):
        loaded = load_cli_model(name, ckpt, pretrained, device)
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

    if csv_path is not None:
        p = Path(csv_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["model", "path", "shape", "texture", "decision", "outcome", "texture_share"])
            for r in results:
                for d in r.decisions:
                    w.writerow([r.model, d.path, d.shape, d.texture, d.decision or "", d.outcome,
                                "" if d.texture_share is None else f"{d.texture_share:.6f}"])
    if plot_path is not None:
        from vitlens import pl
        from vitlens.export.figures import save_figure

        save_figure(pl.shape_bias(results), plot_path)

    if as_json:
        payload = [r.to_dict() for r in results]
        click.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, allow_nan=False))
    else:
        for r in results:
            click.echo(r.summary())
    if csv_path is not None:
        click.echo(f"wrote {csv_path}", err=True)
    if plot_path is not None:
        click.echo(f"wrote {plot_path}", err=True)
