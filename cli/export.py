"""``vitlens export``: many images -> one HDF5 file (schema vitlens/1). Logic lives in vitlens.batch."""
from __future__ import annotations

import signal

import click

from vitlens.errors import VitlensError

from .common import (EXIT_INTERRUPTED, random_weights, EXIT_UNREADABLE, Progress, check_output, fail, geometry, handle_errors,
                     load_cli_model, max_pixels_option, model_options)

#: Exit status when some inputs could not be read (their rows are recorded as failed); the
#: same for every command.
EXIT_SOME_FAILED = EXIT_UNREADABLE


def _int_list(value: str | None, what: str) -> list[int] | None:
    if value is None or value.strip().lower() in ("", "all"):
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated {what} indices, e.g. 0,5,-1, or 'all'") from None


def _analyses(value: str | None) -> list[str] | None:
    if value is None or value.strip().lower() == "all":
        return None
    return [v.strip().lower() for v in value.split(",") if v.strip()]


def _command_line() -> str:
    """The command, rebuilt from what click parsed (arguments, then options that differ from
    their defaults), so it is right however the command was invoked: the console script,
    ``python -m vitlens.cli``, torchrun, or in-process (CliRunner, notebooks)."""
    import shlex

    import os

    ctx = click.get_current_context()
    parts = ["vitlens", "export"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # the launcher's command: torchrun with this process's share of the ranks
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        nodes = [f"--nnodes={world // local}"] if world != local else []
        parts = ["torchrun", *nodes, f"--nproc_per_node={local}", "-m", "vitlens.cli", "export"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            parts.append(str(value))
            continue
        if value is None or value == param.default or value == () or not isinstance(param, click.Option):
            continue
        if param.is_flag:
            opts = param.opts if value else param.secondary_opts
            if opts:
                parts.append(opts[0])
        else:
            for v in value if param.multiple else (value,):
                parts += [param.opts[0], str(v)]
    return shlex.join(parts)


def _check_outputs(output: str, overlays: str | None, resume: bool, overwrite: bool) -> None:
    """OUTPUT.h5 and --overlays, before the model loads."""
    from pathlib import Path

    from vitlens.batch import dist_info
    from vitlens.export.hdf5 import shard_path

    rank, world = dist_info()
    target = shard_path(output, rank) if world > 1 else Path(output)
    check_output(output, "OUTPUT")
    if target.exists() and not (resume or overwrite):
        raise VitlensError(f"'{target}' already exists; pass --resume to continue it after its committed rows, "
                               f"--overwrite to replace it, or choose another OUTPUT")
    check_output(overlays, "--overlays", folder=True)


def _chunk(value: str | None) -> int | str | None:
    """--chunk: None, 'auto' or a positive image count."""
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        from vitlens.errors import VitlensError

        raise VitlensError(f"--chunk takes a positive number of images or 'auto', got {value!r}")
    return n


@click.command()
@click.argument("input_spec", metavar="INPUT", type=str)
@click.argument("output", metavar="OUTPUT.h5", type=click.Path(dir_okay=False))
@model_options()
@click.option("--analyses", default=None, metavar="LIST",
              help="Comma-separated subset of logits, cls, rollout, distance. Default: all the model supports "
                   "(no 'cls' for models without CLS token).")
@click.option("--full", is_flag=True, help="Also store full attention maps attention/layer_XX (N, H, T, T); large.")
@click.option("--layers", default=None, metavar="LIST", help="Layers for --full, e.g. 0,5,-1 (default all).")
@click.option("--heads", default=None, metavar="LIST", help="Heads for --full, e.g. 0,1 (default all).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage dtype of the attention maps (cls_attention, attention/*).")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Images per batch; each batch is committed to the file as a unit.")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="DataLoader processes decoding images (0: decode in this process).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast precision for the forward (bf16/fp16 on GPU).")
@click.option("--resume", is_flag=True, help="Continue OUTPUT after its last committed row (same INPUT and options).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--virtual", is_flag=True,
              help="Under torchrun: make OUTPUT a view (HDF5 virtual datasets) over the OUTPUT.rankN.h5 shards "
                   "instead of copying their rows into it; instant, but the shards must stay beside OUTPUT.")
@click.option("--overlays", "overlays", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write overlay PNGs (rollout, else last-layer CLS) into DIR, mirroring the input tree.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N inputs.")
@click.option("--chunk", default=None, metavar="N|auto",
              help="Compute each ViT-family layer N images at a time (auto: by size), so a layer's "
                   "B x H x T x T attention never exists whole. Default: auto on a GPU, whole layers on the CPU.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary line.")
@max_pixels_option
@handle_errors
def export(input_spec, output, model_name, checkpoint, pretrained, device, debug, analyses, full, layers, heads,
           dtype, compression, batch_size, workers, precision, resume, overwrite, virtual, overlays, limit, chunk,
           quiet):
    """Export attention analyses of every image in INPUT to OUTPUT.h5.

    INPUT is a folder (searched recursively), a text file with one image path per line,
    a quoted glob pattern, or one image. One row per image, in input order; the layout
    is the vitlens/1 schema (docs/hdf5-schema.md); read it with `vitlens inspect`,
    `vitlens figure` or `vitlens.export.read`.

    Every batch is committed before the next starts: after a crash or Ctrl-C, OUTPUT
    holds every committed batch and --resume continues after them.

    Exit status: 0 all images exported; 3 some images could not be read (their rows
    have images/ok = false, the reason in images/error, NaN values); 130 interrupted;
    1 any other error. Under torchrun every rank writes OUTPUT.rankR.h5 and rank 0 copies
    them into one self-contained OUTPUT.h5 (`torchrun --nproc_per_node=N -m vitlens.cli export
    INPUT OUTPUT.h5 ...`; --virtual makes it a view over the shards instead).
    """
    from vitlens.batch import ExportOptions, dist_info, run_export
    from vitlens.models import is_demo
    from vitlens.data import resolve_inputs

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    options = ExportOptions(analyses=_analyses(analyses), full=full, layers=_int_list(layers, "layer"),
                            heads=_int_list(heads, "head"), dtype=dtype, compression=compression,
                            batch_size=batch_size, workers=workers, precision=precision, limit=limit,
                            overlays=overlays, resume=resume, overwrite=overwrite, virtual=virtual,
                            chunk=_chunk(chunk))
    inputs = resolve_inputs(input_spec)
    _check_outputs(output, overlays, resume, overwrite)
    geo = geometry(model_name)
    if geo is not None and full:
        picked = [geo.layer(v, option="--layers") for v in _int_list(layers, "layer") or []] or None
        for v in _int_list(heads, "head") or []:
            geo.head(v, picked, option="--heads")
    rank, world = dist_info()
    if world > 1 and device is None:
        import os

        import torch
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    model, cfg = load_cli_model(model_name, checkpoint, pretrained, device)
    name = model_name or getattr(model, "pretrained_cfg", {}).get("architecture")

    def on_term(signum, frame):  # SIGTERM (e.g. a cluster pre-empting the job): close cleanly like Ctrl-C
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        planned = min(limit or len(inputs.paths), len(inputs.paths))
        with Progress(total=planned // world + (planned % world > rank), label="export",
                      quiet=quiet or rank > 0) as bar:
            def set_total(n: int) -> None:  # after --resume only the remaining rows are read
                if getattr(bar, "_bar", None) is not None:
                    bar._bar.length = n
            summary = run_export(model, cfg, inputs, output, options, checkpoint=checkpoint,
                                 pretrained=pretrained if checkpoint is None and not is_demo(name) else False,
                                 model_name=name, command=_command_line(),
                                 random_weights=random_weights(model, checkpoint, pretrained),
                                 progress=bar.update, total=set_total)
    finally:
        signal.signal(signal.SIGTERM, old)
    if rank > 0:  # rank 0 reports for every rank (torchrun treats any non-zero rank as a failure)
        raise SystemExit(EXIT_INTERRUPTED if summary.interrupted else 0)
    if summary.interrupted:
        fail(f"interrupted: '{output}' holds {summary.rows} committed row(s) and is readable; "
             f"run the same command with --resume to continue", EXIT_INTERRUPTED)
    if not quiet:
        extra = f", resumed after row {summary.resumed_from}" if summary.resumed_from else ""
        shards = (f" ({'view over' if virtual else 'merged from'} {len(summary.shards)} shards)"
                  if summary.shards else "")
        click.echo(f"wrote {output}{shards}: {summary.rows} image(s), {summary.ok} ok, {summary.failed} failed "
                   f"({summary.new_rows} new in {summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s"
                   f"{extra})", err=True)
        if summary.smaller_than_input:
            h, w = (int(v) for v in cfg["input_size"][-2:])
            click.echo(f"vitlens: warning: {summary.smaller_than_input} of the {summary.new_rows} new image(s) are "
                       f"smaller than the model's {w}x{h} input; they are upsampled, so predictions and maps "
                       f"may be unreliable", err=True)
    if summary.failed:
        if not quiet:
            click.echo(f"vitlens: {summary.failed} image(s) could not be read; see images/error "
                       f"(`vitlens inspect {output} --failed`)", err=True)
        raise SystemExit(EXIT_SOME_FAILED)
