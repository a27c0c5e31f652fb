"""Options and error handling shared by every command. No analysis logic lives in cli/."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import click

from vitlens.errors import VitlensError


def model_options(multiple: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--model, --checkpoint, --pretrained/--no-pretrained, --device, --debug.

    With ``multiple=True``, --model and --checkpoint may repeat (parameters
    ``model_names`` and ``checkpoints``, tuples); otherwise ``model_name`` and ``checkpoint``.
    """
    repeat = " Repeat to compare models in one run." if multiple else ""
    decorators = [
        click.option("--model", "model_names" if multiple else "model_name", multiple=multiple,
                     default=None, metavar="NAME",
                     help="timm model name (with optional .tag), or 'demo' for the bundled "
                          "CIFAR-10 ViT. Default: vit_base_patch16_224.augreg2_in21k_ft_in1k, "
                          "falling back to 'demo' when its weights cannot be had offline." + repeat),
        click.option("--checkpoint", "checkpoints" if multiple else "checkpoint", multiple=multiple,
                     type=click.Path(dir_okay=False), default=None,
                     help="Local weights (.safetensors or a torch state_dict) for --model; "
                          "the class count is read from the head weights."
                          + (" Give it once per --model, in the same order." if multiple else "")),
        click.option("--pretrained/--no-pretrained", default=True, show_default=True,
                     help="Load timm's pretrained weights for --model."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
        click.option("--debug", is_flag=True, help="Show full tracebacks on errors."),
    ]

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def fail(message: str, code: int = 1) -> None:
    """One line on stderr, then exit with ``code``."""
    click.echo(f"vitlens: error: {message}", err=True)
    raise SystemExit(code)


def one_line(e: BaseException) -> str:
    """The error as one line, with the library's `parameter` names written as this command's flags."""
    from .flags import to_flags

    text = to_flags(" ".join(str(e).split())) or type(e).__name__
    return text if isinstance(e, VitlensError) else f"{text} ({type(e).__name__})"


def handle_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one stderr line and exit 1, unless --debug or VITLENS_DEBUG=1."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug") or os.environ.get("VITLENS_DEBUG") == "1"
        try:
            return f(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except (VitlensError, ValueError, TypeError, OSError, RuntimeError, KeyError) as e:
            if debug:
                raise
            fail(one_line(e))
    return wrapper


def load_cli_model(model_name: str | None, checkpoint: str | None, pretrained: bool, device: str | None):
    """``load_model`` with the CLI default: the ImageNet ViT-B/16, else the demo with a notice."""
    from vitlens.errors import WeightsUnavailableError
    from vitlens.models import DEFAULT_MODEL, DEMO_NAME, load_model

    if model_name is not None:
        return load_model(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    if checkpoint is not None:
        raise click.UsageError("--checkpoint needs --model naming its architecture")
    try:
        return load_model(DEFAULT_MODEL, pretrained=pretrained, device=device)
    except WeightsUnavailableError:
        click.echo(f"vitlens: notice: weights for {DEFAULT_MODEL} are not available (offline and not "
                   f"cached), so using the bundled '{DEMO_NAME}' model (CIFAR-10 classes, 32x32 input); "
                   f"choose a model with --model NAME", err=True)
        return load_model(DEMO_NAME, device=device)


class Progress:
    """A progress bar on stderr with an items/s rate; silent when stderr is not a terminal or ``quiet``.

    Usage::

        with Progress(total=len(paths), label="export", quiet=quiet) as bar:
            for batch in batches:
                ...
                bar.update(len(batch))
    """

    def __init__(self, total: int | None, label: str, quiet: bool = False, unit: str = "images") -> None:
        import sys
        import time

        self.total, self.label, self.unit = total, label, unit
        self.enabled = not quiet and sys.stderr.isatty()
        self.done = 0
        self._t0 = time.perf_counter()
        self._bar = None

    def rate(self) -> float:
        """Items per second since the bar was made."""
        import time

        return self.done / max(time.perf_counter() - self._t0, 1e-9)

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._bar = click.progressbar(length=self.total, label=self.label, file=click.get_text_stream("stderr"),
                                          show_pos=True, item_show_func=lambda _: f"{self.rate():.1f} {self.unit}/s")
            self._bar.__enter__()
        return self

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n, self.done)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def check_plot_path(plot_path: str | None, option: str = "--plot") -> None:
    """Refuse a figure path whose suffix is not a format the figures can be saved in."""
    if plot_path is None:
        return
    from pathlib import Path

    from vitlens.export.figures import FIGURE_FORMATS

    fmt = Path(plot_path).suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        endings = ["." + f for f in FIGURE_FORMATS]
        raise VitlensError(f"{option} '{plot_path}': use a file name ending in "
                           f"{', '.join(endings[:-1])} or {endings[-1]}")


class FailedItems:
    """Wrap :func:`vitlens.data.image_batches`: remember failed items and decoded paths; stop after ``limit`` decoded images."""

    def __init__(self, batches, root, limit: int | None = None) -> None:
        self.batches, self.root, self.limit = batches, root, limit
        self.failed: list[tuple[str, str]] = []
        self.ok_paths: list[str] = []

    def __iter__(self):
        from vitlens.data import ImageBatch, relative_name

        for b in self.batches:
            if self.limit is not None:
                ok_idx = b.ok.nonzero().flatten()
                room = self.limit - len(self.ok_paths)
                if len(ok_idx) > room:       # trim the batch after the last image that fits
                    cut = int(ok_idx[room - 1]) + 1 if room > 0 else 0
                    b = ImageBatch(b.index[:cut], b.images[:cut], b.ok[:cut], b.errors[:cut], b.paths[:cut])
            for ok, err, p in zip(b.ok.tolist(), b.errors, b.paths):
                if ok:
                    self.ok_paths.append(relative_name(p, self.root))
                else:
                    self.failed.append((relative_name(p, self.root), err))
            yield b
            if self.limit is not None and len(self.ok_paths) >= self.limit:
                return


def warn_failed(failed: list[tuple[str, str]], limit: int = 10) -> None:
    """One stderr warning per skipped file (at most ``limit``), then a count of the rest."""
    for path, reason in failed[:limit]:
        click.echo(f"vitlens: warning: skipped {path}: {reason}", err=True)
    if len(failed) > limit:
        click.echo(f"vitlens: warning: ... and {len(failed) - limit} more skipped file(s) (see --json)", err=True)
