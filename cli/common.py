"""Options and error handling shared by every command. No analysis logic lives in cli/."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import click

from vitlens.errors import VitlensError

#: Exit status of every command when one or more inputs could not be read (missing, not
#: an image, truncated, too large): the readable ones were processed and their results
#: written; the unreadable ones are named on stderr (and in --json / the HDF5 file).
EXIT_UNREADABLE = 3
#: Exit status after Ctrl-C / SIGTERM.
EXIT_INTERRUPTED = 130


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep a model-loading option in ``ctx.meta`` for :func:`load_cli_model` (no extra parameter
    in every command's signature)."""
    ctx.meta.setdefault("vitlens_model", {})[param.name] = value
    return value


def _triple(value: str, option: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise click.BadParameter(f"{value!r}: give three numbers R,G,B, e.g. 0.485,0.456,0.406", param_hint=option)
    return vals  # type: ignore[return-value]


def _size(value: str) -> tuple[int, int]:
    parts = value.lower().replace(",", "x").split("x")
    try:
        vals = [int(v) for v in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or min(vals) < 1:
        raise click.BadParameter(f"{value!r}: give N or HxW, e.g. 224 or 256x320", param_hint="--input-size")
    return vals[0], vals[1]


def model_overrides() -> dict[str, Any]:
    """``load_model(classes=..., data_config=...)`` from --classes and the preprocessing options."""
    ctx = click.get_current_context(silent=True)
    meta = (ctx.meta.get("vitlens_model") if ctx is not None else None) or {}
    out: dict[str, Any] = {}
    if meta.get("classes"):
        out["classes"] = meta["classes"]
    cfg: dict[str, Any] = {}
    if meta.get("data_config"):
        from vitlens.models import _read_data_config

        cfg.update(_read_data_config(meta["data_config"]))
    if meta.get("input_size"):
        cfg["input_size"] = _size(meta["input_size"])
    for key in ("mean", "std"):
        if meta.get(key):
            cfg[key] = _triple(meta[key], f"--{key}")
    if meta.get("crop_pct") is not None:
        cfg["crop_pct"] = meta["crop_pct"]
    if meta.get("interpolation"):
        cfg["interpolation"] = meta["interpolation"]
    if cfg:
        out["data_config"] = cfg
    return out


def model_options(multiple: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--model, --checkpoint, --pretrained/--no-pretrained, --device, --debug.

    With ``multiple=True``, --model and --checkpoint may repeat (parameters
    ``model_names`` and ``checkpoints``, tuples); otherwise ``model_name`` and ``checkpoint``.
    """
    repeat = " Repeat to compare models in one run." if multiple else ""
    decorators = [
        click.option("--model", "model_names" if multiple else "model_name", multiple=multiple,
                     default=None, metavar="NAME",
                     help="timm model name (with optional .tag), 'hf:REPO_ID' or 'hf:FOLDER' (a "
                          "save_pretrained folder) for a Hugging Face transformers model (vitlens[hf]), "
                          "or 'demo' for the bundled CIFAR-10 ViT. Default: vit_base_patch16_224.augreg2_in21k_ft_in1k, "
                          "falling back to 'demo' when its weights cannot be had offline." + repeat),
        click.option("--checkpoint", "checkpoints" if multiple else "checkpoint", multiple=multiple,
                     type=click.Path(dir_okay=False), default=None,
                     help="Local weights (.safetensors or a torch state_dict) for --model; "
                          "the class count is read from the head weights."
                          + (" Give it once per --model in the same order, or as MODEL=PATH for only "
                             "the models that have one." if multiple else "")),
        click.option("--pretrained/--no-pretrained", default=True, show_default=True,
                     help="Load timm's pretrained weights for --model."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
        click.option("--debug", is_flag=True, help="Show full tracebacks on errors."),
        click.option("--classes", type=click.Path(dir_okay=False), default=None, expose_value=False,
                     callback=_remember, metavar="FILE",
                     help="Class names of the model's outputs: a .txt file (one per line, in output order) or a "
                          ".json list; for a fine-tuned --checkpoint with its own classes (names in the output, "
                          "--target NAME, --labels)." + (" Applies to every --model." if multiple else "")),
        click.option("--input-size", default=None, callback=_remember, expose_value=False, metavar="N|HxW",
                     help="Preprocessing: model input size (default: timm's data config of --model)."),
        click.option("--mean", default=None, callback=_remember, expose_value=False, metavar="R,G,B",
                     help="Preprocessing: normalisation mean."),
        click.option("--std", default=None, callback=_remember, expose_value=False, metavar="R,G,B",
                     help="Preprocessing: normalisation std."),
        click.option("--crop-pct", type=click.FloatRange(0, 1, min_open=True), default=None, callback=_remember,
                     expose_value=False, help="Preprocessing: centre-crop fraction (1.0: no crop)."),
        click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "nearest", "lanczos", "box",
                                                           "hamming"]),
                     default=None, callback=_remember, expose_value=False, help="Preprocessing: resize filter."),
        click.option("--data-config", type=click.Path(dir_okay=False), default=None, callback=_remember,
                     expose_value=False, metavar="JSON",
                     help="Preprocessing from a timm-style pretrained_cfg JSON (input_size, mean, std, crop_pct, "
                          "interpolation, crop_mode); the options above override it. docs/howto/own-checkpoint.md"),
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
    """The error as one line in the project's style: the message only, no exception class name,
    with the library's `parameter` names written as this command's flags."""
    from .flags import to_flags

    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"cannot access '{e.filename}': {e.strerror}"
    elif isinstance(e, OSError) and e.strerror and len(e.args) == 2:  # OSError(errno, text): no "[Errno N]"
        text = e.strerror
    elif isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]  # str(KeyError) adds quotes around the message
    else:
        text = str(e)
    return to_flags(" ".join(text.split())) or type(e).__name__


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


#: Said wherever results of a randomly initialised model are reported (stderr, JSON, CSV).
RANDOM_WEIGHTS_NOTE = ("random weights: --no-pretrained without --checkpoint gives an untrained model, so "
                       "these results show its initialisation, not what a trained model does")


def random_weights(model: Any, checkpoint: str | None, pretrained: bool) -> bool:
    """The model runs with random-init weights (``--no-pretrained`` without ``--checkpoint``;
    the bundled demo always has its trained weights)."""
    from vitlens.models import is_demo

    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return not pretrained and checkpoint is None and not is_demo(arch)


def load_cli_model(model_name: str | None, checkpoint: str | None, pretrained: bool, device: str | None):
    """``load_model`` with the CLI default: the ImageNet ViT-B/16, else the demo with a notice.
    Random-init weights are announced on stderr."""
    from vitlens.capture import adapter_for

    loaded = _load_cli_model(model_name, checkpoint, pretrained, device)
    if random_weights(loaded.model, checkpoint, pretrained):
        try:
            adapter_for(loaded.model)
        except VitlensError:  # unsupported: the command's own error follows, alone
            return loaded
        click.echo(f"vitlens: warning: {RANDOM_WEIGHTS_NOTE}", err=True)
    return loaded


def _load_cli_model(model_name: str | None, checkpoint: str | None, pretrained: bool, device: str | None):
    from vitlens.errors import WeightsUnavailableError
    from vitlens.models import DEFAULT_MODEL, DEMO_NAME, load_model

    extra = model_overrides()
    if model_name is not None:
        return load_model(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device, **extra)
    if checkpoint is not None:
        raise click.UsageError("--checkpoint needs --model naming its architecture")
    try:
        return load_model(DEFAULT_MODEL, pretrained=pretrained, device=device, **extra)
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
    """Wrap :func:`vitlens.data.image_batches`: remember failed items, decoded paths and (given the
    model's ``data_config``) decoded images smaller than the model's input; stop after ``limit``
    decoded images."""

    def __init__(self, batches, root, limit: int | None = None, data_config: dict[str, Any] | None = None) -> None:
        self.batches, self.root, self.limit, self.data_config = batches, root, limit, data_config
        self.failed: list[tuple[str, str]] = []
        self.ok_paths: list[str] = []
        self.small: list[tuple[str, tuple[int, int]]] = []   # (path, (width, height))

    def __iter__(self):
        from vitlens.data import ImageBatch, relative_name

        for b in self.batches:
            if self.limit is not None:
                ok_idx = b.ok.nonzero().flatten()
                room = self.limit - len(self.ok_paths)
                if len(ok_idx) > room:       # trim the batch after the last image that fits
                    cut = int(ok_idx[room - 1]) + 1 if room > 0 else 0
                    b = ImageBatch(b.index[:cut], b.images[:cut], b.ok[:cut], b.errors[:cut], b.paths[:cut],
                                   None if b.sizes is None else b.sizes[:cut])
            for ok, err, p in zip(b.ok.tolist(), b.errors, b.paths):
                if ok:
                    self.ok_paths.append(relative_name(p, self.root))
                else:
                    self.failed.append((relative_name(p, self.root), err))
            if self.data_config is not None:
                for i in b.smaller_than_input(self.data_config):
                    w, h = b.sizes[i].tolist()
                    self.small.append((relative_name(b.paths[i], self.root), (w, h)))
            yield b
            if self.limit is not None and len(self.ok_paths) >= self.limit:
                return


def warn_failed(failed: list[tuple[str, str]], limit: int = 10) -> None:
    """One stderr warning per skipped file (at most ``limit``), then a count of the rest."""
    for path, reason in failed[:limit]:
        from .flags import to_flags

        click.echo(f"vitlens: warning: skipped {path}: {to_flags(str(reason))}", err=True)
    if len(failed) > limit:
        click.echo(f"vitlens: warning: ... and {len(failed) - limit} more skipped file(s) (see --json)", err=True)


# ----------------------------------------------------------------- output paths
def check_output(path: str | None, option: str, *, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any model runs.

    Checks that ``path`` is not a folder (``folder=False``) or a file (``folder=True``),
    that the nearest existing parent is a folder this process can create files in (by
    creating and removing a temporary file there: permission bits alone do not tell, e.g.
    on a read-only mount), and that an existing file is writable. Nothing is created.
    """
    if path is None:
        return
    import tempfile
    from pathlib import Path

    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise VitlensError(f"{option} '{path}' is a file, not a folder; give a folder for the output files")
        if not folder and p.is_dir():
            raise VitlensError(f"{option} '{path}' is a folder; give a file name")
    where = p if folder and p.is_dir() else p.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise VitlensError(f"cannot write {option} '{path}': '{where}' is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=where, prefix=".vitlens-write-check-"):
            pass
    except OSError as e:
        raise VitlensError(f"cannot write {option} '{path}': cannot create files in folder '{where}' "
                           f"({e.strerror or e}); choose a writable location") from None
    if p.is_file() and not os.access(p, os.W_OK):
        raise VitlensError(f"cannot write {option} '{path}': the file exists and is read-only")


def write_late(write: Callable[[], Any], path: str, option: str) -> None:
    """Run ``write()`` (saving a result file at the end of a run); on failure, exit 1 with
    an error saying that the results are on stdout already (callers print them first)."""
    try:
        write()
    except (OSError, ValueError) as e:
        fail(f"cannot write {option} '{path}': {one_line(e)}; the results are printed above (stdout)")


def write_plot_late(plot_path: str | None, draw: Callable[[Any], Any]) -> None:
    """Write ``--plot`` at the end of a command whose results are on stdout already:
    ``draw(pl)`` gets :mod:`vitlens.pl` and returns the figure; a failed write loses nothing."""
    if plot_path is None:
        return
    from vitlens import pl
    from vitlens.export.figures import save_figure

    write_late(lambda: save_figure(draw(pl), plot_path), plot_path, "--plot")
    click.echo(f"wrote {plot_path}", err=True)


# ----------------------------------------------------------- layers and heads
class Geometry:
    """Layers and heads of a model architecture, read from its weightless skeleton."""

    def __init__(self, model_name: str) -> None:
        from vitlens.capture import adapter_for
        from vitlens.models import build_skeleton

        skeleton = build_skeleton(model_name)
        adapter = adapter_for(skeleton)  # an unsupported family fails here, before any download
        self.name = model_name
        self.num_layers = len(adapter.attention_modules())
        self.heads = [int(adapter.heads_of(i)) for i in range(self.num_layers)]
        self.gradcam_blocks: int | None
        try:
            from vitlens.analysis.gradients import gradcam_modules

            modules, windowed = gradcam_modules(skeleton)
            self.gradcam_blocks, self.gradcam_what = len(modules), "stages" if windowed else "blocks"
        except Exception:  # gradcam support is checked again when it runs
            self.gradcam_blocks, self.gradcam_what = None, "blocks"

    def layer(self, value: int, option: str = "--layer", n: int | None = None, what: str = "layers") -> int:
        """``value`` (negative from the end) as ``0..n-1``, or a VitlensError naming ``option``."""
        n = self.num_layers if n is None else n
        if not -n <= value < n:
            raise VitlensError(f"{option}: layer {value} is out of range for this {n}-{what.rstrip('s')} model "
                               f"({self.name}): valid are 0..{n - 1}, or -{n}..-1 from the end")
        return value % n

    def head(self, value: int, layers: list[int] | None = None, option: str = "--head") -> int:
        """Check a head index against every layer in ``layers`` (default all)."""
        n = min(self.heads[i] for i in (layers if layers is not None else range(self.num_layers)))
        if not -n <= value < n:
            raise VitlensError(f"{option}: head {value} is out of range: {self.name} has {n} heads per layer "
                               f"(0..{n - 1}, or -{n}..-1 from the end)")
        return value % n


def geometry(model_name: str | None) -> Geometry | None:
    """:class:`Geometry` of ``--model`` (None without --model: the default may fall back to the demo)."""
    if model_name is None:
        return None
    return Geometry(model_name)


# ----------------------------------------------------------------- input images
def _max_pixels(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from vitlens.data import MAX_PIXELS_ENV, _apply_pixel_limit_env

    text = value.strip().lower()
    if text != "none" and not (text.isdigit() and int(text) > 0):
        raise click.BadParameter(f"{value!r}: give a number of pixels, or 'none' to disable the check")
    os.environ[MAX_PIXELS_ENV] = text  # read by load_image, also in DataLoader worker processes
    _apply_pixel_limit_env()
    return text


def max_pixels_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-image-pixels N``: the decompression-bomb limit for this run (sets VITLENS_MAX_IMAGE_PIXELS)."""
    return click.option("--max-image-pixels", "max_image_pixels", default=None, metavar="N|none",
                        expose_value=False, callback=_max_pixels,
                        help="Accept images with up to N pixels (Pillow's decompression-bomb limit, default "
                             "89478485); 'none' disables the check. Same as the environment variable "
                             "VITLENS_MAX_IMAGE_PIXELS.")(f)


def warn_small_inputs(small: Sequence[tuple[str, tuple[int, int]]], data_config: dict[str, Any], total: int) -> None:
    """One stderr warning for a batch command whose inputs include images smaller than the model's
    input (see :meth:`vitlens.data.ImageBatch.smaller_than_input`): how many, and the first few."""
    if not small:
        return
    h, w = (int(v) for v in data_config["input_size"][-2:])
    shown = ", ".join(f"{p} ({sz[0]}x{sz[1]})" for p, sz in small[:3])
    more = f" and {len(small) - 3} more" if len(small) > 3 else ""
    click.echo(f"vitlens: warning: {len(small)} of {total} image(s) are smaller than the model's {w}x{h} input: "
               f"{shown}{more}; they are upsampled, so predictions and maps may be unreliable", err=True)


def warn_small(path: str, size: tuple[int, int], data_config: dict[str, Any]) -> None:
    """Warn when an image is smaller than the model's input: it gets upsampled, and the map
    shows the model's view of an enlarged, blurred picture."""
    h, w = (int(v) for v in data_config["input_size"][-2:])
    if size[0] < w or size[1] < h:
        click.echo(f"vitlens: warning: {path} is {size[0]}x{size[1]} pixels, smaller than the model's "
                   f"{w}x{h} input; it is upsampled, so predictions and maps may be unreliable", err=True)


def model_label(model_name: str | None, model: Any, checkpoint: str | None) -> str:
    """How outputs name the model: --model (or the architecture loaded by default), plus the
    checkpoint's file name, so maps of two fine-tunes of one architecture never share a name."""
    from pathlib import Path

    from vitlens.models import is_demo

    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = model_name
    if name is None:
        arch, tag = cfg.get("architecture"), cfg.get("tag")
        name = f"{arch}.{tag}" if arch and tag and not is_demo(arch) else str(arch or type(model).__name__)
    return f"{name}+{Path(checkpoint).stem}" if checkpoint else name
