"""Streaming batch export: DataLoader -> capture -> analyses -> HDF5 writer.

:func:`run_export` is what ``vitlens export`` runs. Images are decoded and preprocessed
in DataLoader workers (:func:`vitlens.data.image_batches`), each batch runs through the
model once inside :func:`vitlens.capture`, the requested analyses turn the cache into
per-image rows, and :class:`vitlens.export.hdf5.ExportWriter` appends and commits them.
Nothing is kept across batches, so peak memory depends on the batch size, not on the
number of images.

Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1) every rank exports a
contiguous shard of the inputs to ``OUTPUT.rank{r}.h5`` and rank 0 then writes
``OUTPUT.h5`` from the shards in input order (a self-contained copy; a virtual-dataset
view with ``ExportOptions(virtual=True)`` / ``--virtual``)::

    torchrun --nproc_per_node=2 -m vitlens.batch INPUT OUTPUT.h5 --model demo

(``python -m vitlens.batch`` takes the same arguments as ``vitlens export``.)
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .analysis import cls_attention, rollout
from .capture import capture, logits_of
from .capture.recorder import valid_chunk
from .data import ImageBatch, Inputs, image_batches, relative_name, resolve_inputs
from ._util import model_device, resolve_indices
from .errors import VitlensError

__all__ = ["ANALYSES", "ExportOptions", "ExportSummary", "run_export", "plan_analyses", "dist_info"]

#: Analyses ``vitlens export --analyses`` knows, with the dataset each one writes.
ANALYSES: dict[str, str] = {"logits": "logits", "cls": "cls_attention", "rollout": "rollout",
                            "distance": "attention_distance"}
DTYPES = ("float16", "float32")
COMPRESSIONS = ("gzip", "lzf", "none")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExportOptions:
    """Options of :func:`run_export` (the ``vitlens export`` flags).

    Attributes:
        analyses: subset of :data:`ANALYSES`; None = every one the model supports.
        full: also store full attention maps ``attention/layer_XX`` ``(N, H, T, T)``.
        layers: layers for ``full`` (None = all; negative counts from the end).
        heads: heads for ``full`` (None = all).
        dtype: storage dtype of the attention maps (``cls_attention``, ``attention/*``).
        compression: ``"gzip"``, ``"lzf"`` or ``"none"``.
        batch_size: images per batch; also the commit unit.
        workers: DataLoader decoding processes.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast.
        limit: only the first ``limit`` inputs.
        overlays: folder for overlay PNGs mirroring the input tree (None: none), named
            like ``vitlens attend``'s (:func:`vitlens.export.overlay.overlay_name`); existing
            files are kept (a fresh name is chosen) unless ``overwrite``.
        resume: continue an existing OUTPUT after its committed rows.
        overwrite: replace an existing OUTPUT.
        virtual: under torchrun, join the shards into a view of HDF5 virtual datasets
            (instant, but the shard files must stay beside OUTPUT) instead of copying their
            rows into a self-contained OUTPUT (the default).
        reduce: reduce each layer's attention as it is recorded (default): the analyses
            hold a CLS row per layer, ``[B, H]`` statistics and one running rollout
            product instead of every layer's ``[B, H, T, T]``; full tensors are kept only
            for ``full``. False keeps every layer for the batch first (the older path,
            for comparison; same values, rollout within 1e-6).
        chunk: with ``reduce``, compute the layers vitlens can compute itself this many
            images at a time (``capture(chunk=...)``; ``"auto"``: by a byte budget). None
            (default): ``"auto"`` on an accelerator, whole layers on the CPU
            (:func:`export_chunk`).
    """

    analyses: Sequence[str] | None = None
    full: bool = False
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    dtype: str = "float16"
    compression: str = "gzip"
    batch_size: int = 32
    workers: int = 0
    precision: str = "fp32"
    limit: int | None = None
    overlays: str | os.PathLike[str] | None = None
    resume: bool = False
    overwrite: bool = False
    virtual: bool = False
    reduce: bool = True
    chunk: int | str | None = None

    def __post_init__(self) -> None:
        """Check every option that does not depend on the model (ValueError naming the option)."""
        for name in ("batch_size", "workers", "limit"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise TypeError(f"`{name}` must be an int, got {type(v).__name__} {v!r}")
        for name in ("analyses", "layers", "heads"):
            v = getattr(self, name)
            if isinstance(v, (str, bytes)):
                raise TypeError(f"`{name}` must be a sequence (e.g. a list), not a single string {v!r}")
        if self.dtype not in DTYPES:
            raise VitlensError(f"`dtype` must be one of {DTYPES}, got {self.dtype!r}")
        if self.compression not in COMPRESSIONS:
            raise VitlensError(f"`compression` must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.precision not in PRECISIONS:
            raise VitlensError(f"`precision` must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 1:
            raise VitlensError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise VitlensError(f"`workers` must be 0 or more, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise VitlensError(f"`limit` must be at least 1, got {self.limit}")
        if (self.layers is not None or self.heads is not None) and not self.full:
            raise VitlensError("`layers` and `heads` choose the full attention maps; add `full=True`")
        if self.resume and self.overwrite:
            raise VitlensError("`resume=True` continues the existing output and `overwrite=True` replaces it; "
                               "choose one")
        if self.chunk is not None and not valid_chunk(self.chunk):
            raise VitlensError(f"`chunk` must be a positive number of images, 'auto' or None, got {self.chunk!r}")
        if self.chunk is not None and not self.reduce:
            raise VitlensError("`chunk` computes layers in image chunks for reduce on record; drop it or keep "
                               "`reduce=True`")


@dataclass
class ExportSummary:
    """What :func:`run_export` did (for the whole output; torchrun: every rank together)."""

    path: Path
    rows: int
    ok: int
    failed: int
    new_rows: int
    resumed_from: int
    seconds: float
    interrupted: bool = False
    shards: list[Path] = field(default_factory=list)
    #: decoded images smaller than the model's input in width or height (upsampled by preprocessing)
    smaller_than_input: int = 0

    @property
    def images_per_second(self) -> float:
        return self.new_rows / max(self.seconds, 1e-9)


# ------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class _Plan:
    analyses: tuple[str, ...]
    full_layers: tuple[int, ...]
    full_heads: tuple[int, ...] | None
    capture_layers: tuple[int, ...] | None   # None = no capture needed
    rows: str
    num_layers: int
    has_cls: bool
    reductions: tuple[str, ...] = ()         # capture(reduce=...) names; () = keep full tensors
    no_logits: str = ""                      # why the model has no class logits ("" when it has them)
    chunk: int | str | None = None           # capture(chunk=...): vitlens computes the layers in image chunks


#: analysis -> the reduce-on-record reduction that computes it (vitlens.reductions).
_REDUCTIONS = {"cls": "cls", "rollout": "rollout", "distance": "distance"}


def plan_analyses(model: nn.Module, options: ExportOptions) -> _Plan:
    """Check the requested analyses against the model; decide what to capture.

    Args:
        model: the model to export from.
        options: the export options.

    Raises:
        VitlensError: unknown analysis, CLS maps of a model without CLS token, bad
            layers/heads, or a model vitlens cannot capture.
    """
    from .capture.adapters import adapter_for

    adapter = adapter_for(model)  # unsupported family: clear error before any image is read
    desc = adapter.describe()
    n_layers = len(desc.layers)
    has_cls, windowed = desc.has_cls, desc.windowed
    # layers the token analyses cannot use (attention-pool heads, class attention, weights that
    # are not probabilities, parallel branches for rollout): say which, from the description
    odd = next((s for s in desc.layers if not s.softmax or not (s.kind == "window" or s.on_layout(desc.layout))),
               None)
    branch = next((s for s in desc.layers if s.branch_of is not None), None)
    why_not = {a: f"layer {s.index} ({s.hook_point}) is {s.kind} attention{'' if s.softmax else ' with weights that are not probabilities'}"
               for a, s in (("cls", odd), ("distance", odd), ("rollout", odd or branch)) if s is not None}
    if odd is None and branch is not None:
        why_not["rollout"] = f"layer {branch.index} ({branch.hook_point}) is a parallel attention branch"
    if options.analyses is None:
        analyses = tuple(a for a in ANALYSES if (a != "cls" or (has_cls and not windowed)) and a not in why_not
                         and (a != "logits" or desc.class_logits))
    else:
        analyses = tuple(dict.fromkeys(options.analyses))
        unknown = [a for a in analyses if a not in ANALYSES]
        if unknown:
            raise VitlensError(f"unknown analysis {unknown[0]!r}; choose from {', '.join(ANALYSES)} "
                               f"(comma-separated), or leave `analyses` out (None) for all the model supports")
        if "logits" in analyses and not desc.class_logits:
            raise VitlensError(f"'logits' cannot be exported: {adapter.no_logits_reason()}; drop it from "
                               f"`analyses` (or leave `analyses` out for all the model supports)")
        refused = [a for a in analyses if a in why_not]
        if refused:
            raise VitlensError(f"{refused[0]!r} needs square token attention probabilities in every layer of "
                               f"{type(model).__name__}, but {why_not[refused[0]]}; drop it from `analyses` "
                               f"(or leave `analyses` out for all the model supports)")
        if "cls" in analyses and (windowed or not has_cls):
            raise VitlensError(f"{type(model).__name__} has no CLS token, so it has no CLS attention maps; "
                               f"drop 'cls' from `analyses` (rollout works without CLS)")
    if not analyses and not options.full:
        raise VitlensError("nothing to export: `analyses` is empty and `full` is off")

    def resolve(values: Sequence[int] | None, n: int, what: str) -> tuple[int, ...] | None:
        if values is None:
            return None
        try:
            return resolve_indices(values, n, what)
        except (TypeError, ValueError) as e:
            raise VitlensError(str(e)) from None

    full_layers: tuple[int, ...] = ()
    full_heads = None
    if options.full:
        full_layers = resolve(options.layers, n_layers, "layer") or tuple(range(n_layers))
        min_heads = min(int(adapter.heads_of(i)) for i in full_layers)
        full_heads = resolve(options.heads, min_heads, "head")
    attention_analyses = tuple(a for a in analyses if a in _REDUCTIONS)
    needs_all = {"rollout", "distance"} & set(analyses) or full_layers
    if attention_analyses:
        capture_layers: tuple[int, ...] | None = tuple(range(n_layers))
    elif full_layers:
        capture_layers = full_layers
    else:
        capture_layers = None
    rows = "all" if needs_all or not desc.num_prefix_tokens else "prefix"
    reductions = tuple(_REDUCTIONS[a] for a in attention_analyses) if options.reduce else ()
    chunk = None
    if adapter.chunks and reductions and rows == "all":
        chunk = options.chunk if options.chunk is not None else export_chunk(model_device(model))
    return _Plan(analyses, full_layers, full_heads, capture_layers, rows, n_layers, has_cls and not windowed,
                 reductions, "" if desc.class_logits else f"the model returns {adapter.returns_instead}", chunk)


def export_chunk(device: torch.device) -> str | None:
    """``capture(chunk=...)`` for an export's reduce-on-record capture: ``"auto"`` on an accelerator,
    where it bounds the layer's transient (ViT-L/14@336 at batch 64: 1.46 GB computed whole, 274 MB
    in chunks of 12 images); None on the CPU, where timm's unfused path with whole layers keeps the
    lower peak RSS. Fresh processes, batch 32, 64 images (benchmarks/export_throughput.py,
    2026-12-02): ViT-S 1.03x plain against 1.10x in chunks, ViT-B 1.05x against 1.15x (glibc's heap
    fragments: the bytes in use at the peak were no more than on timm's path, README). The chunks
    fault less (ViT-S, 96 images: 0.61-0.74 M minor faults and 1.2-1.4 s system time against
    1.05-1.27 M and 2.1-2.5 s; plain inference 0.56-0.67 M and 1.1-1.3 s) and ran faster in single
    passes (ViT-B 0.972x plain against 0.912x), but the paired rounds on this noisy machine did not
    separate the two (ViT-S 0.927x against 0.950x, ViT-B 0.997x against 0.938x, rounds spanning
    0.72-1.02)."""
    return None if device.type == "cpu" else "auto"


# ------------------------------------------------------------------------ compute
def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype is torch.float16:
        raise VitlensError("`precision=fp16` autocast needs a GPU; on the CPU use bf16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _analyse(model: nn.Module, x: torch.Tensor, plan: _Plan, precision: str) -> tuple[dict[str, torch.Tensor], Any]:
    """One forward; every requested analysis for the batch, ``{dataset: [B, ...]}`` on the CPU."""
    out: dict[str, torch.Tensor] = {}
    with _autocast(x.device, precision):
        # the output is read as logits only when they are exported: a model returning tokens
        # (no class logits, refused in plan_analyses) still exports its attention
        read = (lambda y: logits_of(model, y)) if "logits" in plan.analyses else (lambda y: None)
        if plan.capture_layers is None:
            logits = read(model(x))
            layout = None
            cache = None
        else:
            # rows="all": compute each layer's attention once, never beside the fused kernel (a
            # second q·kᵀ and softmax: measured ~10% slower end to end, benchmarks/export_throughput.py);
            # logits agree with the fused forward to ~1e-6. Reduce on record (plan.reductions): each
            # layer's probabilities go to the CLS-row, rollout and distance reductions as the forward
            # produces them and are dropped; only the --full layers are kept whole. Where the adapter
            # can (plan.chunk), vitlens computes each layer a few images at a time and the reductions
            # read every chunk from the CPU cache; otherwise the blocks run timm's unfused path and
            # their probabilities are recorded (capture's grad=True; no graph under no_grad).
            with capture(model, layers=list(plan.capture_layers), rows=plan.rows,
                         grad=plan.rows == "all" and plan.chunk is None,
                         reduce=list(plan.reductions) or None, chunk=plan.chunk,
                         keep=(list(plan.full_layers) or False) if plan.reductions else None) as cache:
                logits = read(model(x))
            layout = cache.layout
    if logits is not None:
        out["logits"] = logits.float()
    if cache is not None:
        if "cls" in plan.analyses:
            out["cls_attention"] = torch.stack(
                [cls_attention(cache, layer=i, head=None) for i in range(plan.num_layers)], dim=1)
        if "rollout" in plan.analyses:
            out["rollout"] = rollout(cache)
        if "distance" in plan.analyses:
            from .analysis.distance import mean_attention_distance

            out["attention_distance"] = mean_attention_distance(cache)
        for layer in plan.full_layers:
            a = cache.dense_attention(layer)
            if plan.full_heads is not None:
                a = a[:, list(plan.full_heads)]
            out[f"attention/layer_{layer:02d}"] = a
    return {k: v.float().cpu() for k, v in out.items()}, layout


# ----------------------------------------------------------------------- helpers
def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` outside torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _weights_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        # reshape(-1): a 0-dim tensor (Gemma 4's clamp bounds) cannot be viewed as bytes; same bytes otherwise
        # (the array's buffer itself, not a bytes copy of it: ViT-B hashes in 0.29 s instead of 0.35 s)
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()[:32]


def _model_name(model: nn.Module) -> str:
    from .models import is_demo

    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    tag = cfg.get("tag")
    if arch:
        return f"{arch}.{tag}" if tag and not is_demo(arch) else str(arch)
    return type(model).__name__


def _overlay_path(root: Path, rel: str, model: str, method: str, layer: int | None = None) -> Path:
    """``root/<rel folder>/<image>__<model>__<method>.png``: the naming scheme of ``vitlens attend``
    (:func:`vitlens.export.overlay.overlay_name`), in a tree mirroring the inputs."""
    from .export.overlay import overlay_name

    rel_path = Path(rel)
    if rel_path.is_absolute():  # outside the input root: keep only the name
        rel_path = Path(rel_path.name)
    return root / rel_path.parent / overlay_name(rel_path, model, method, layer=layer, head="mean")


def _write_overlays(root: Path, batch_paths: Sequence[Path], rels: Sequence[str], ok: np.ndarray,
                    maps: np.ndarray, method: str, data_config: dict[str, Any], model: str,
                    overwrite: bool, taken: set[Path], layer: int | None = None) -> None:
    from .data import load_image
    from .export.overlay import fresh_path, overlay, save_png
    from .models import input_box

    for p, rel, good, m in zip(batch_paths, rels, ok, maps):
        if not good:
            continue
        img = load_image(p)
        dest = fresh_path(_overlay_path(root, rel, model, method, layer), overwrite, taken)
        save_png(dest, overlay(img, m, box=input_box(img.size, data_config)))


# --------------------------------------------------------------------------- run
def run_export(model: nn.Module, data_config: dict[str, Any], inputs: Inputs | str | os.PathLike[str] | Sequence[Any],
               output: str | os.PathLike[str], options: ExportOptions | None = None, *,
               checkpoint: str | os.PathLike[str] | None = None, pretrained: bool | None = None,
               model_name: str | None = None, command: str | None = None, random_weights: bool = False,
               progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None,
               ) -> ExportSummary:
    """Export analyses of many images to one HDF5 file (schema ``vitlens/1``), streaming.

    Example::

        model, cfg = vitlens.load_model("demo")
        from vitlens.batch import run_export, ExportOptions
        summary = run_export(model, cfg, "images/", "out.h5", ExportOptions(batch_size=64))

    Each batch is committed before the next one starts (see :mod:`vitlens.export.hdf5`);
    ``options.resume`` continues after the last committed row and refuses a file written
    with a different model, weights, inputs or options. Undecodable images become rows
    with ``images/ok = False``, the reason in ``images/error`` and NaN values. Ctrl-C
    closes the file after the last committed batch (``summary.interrupted``).

    Under torchrun (``WORLD_SIZE`` > 1, ``torch.distributed`` initialised here with gloo
    on CPU / nccl on GPU if needed) each rank writes ``OUTPUT.rank{r}.h5`` for rows
    ``[r*N//W, (r+1)*N//W)`` and rank 0 joins them into ``output``: a self-contained
    copy, or a virtual-dataset view with ``options.virtual``.

    Args:
        model: a supported model in eval mode (its device is used).
        data_config: the model's timm data config.
        inputs: an :class:`~vitlens.data.Inputs` or anything :func:`vitlens.data.resolve_inputs` takes.
        output: the ``.h5`` file.
        options: :class:`ExportOptions`.
        checkpoint, pretrained, model_name: recorded in the file's attributes.
        command: recorded in the ``command`` attribute.
        random_weights: the model has random-init weights (not trained); recorded as the
            ``random_weights`` attribute so the file says so.
        progress: called with the number of images after every committed batch.
        total: called once with the number of images this process will read.

    Returns:
        :class:`ExportSummary` (``failed > 0`` when some images could not be read).
    """
    from .export import hdf5

    options = options or ExportOptions()
    if not isinstance(inputs, Inputs):
        inputs = resolve_inputs(inputs)
    paths = list(inputs.paths)[: options.limit] if options.limit else list(inputs.paths)
    rels = [relative_name(p, inputs.root) for p in paths]
    model.eval()
    plan = plan_analyses(model, options)
    device = model_device(model)
    _autocast(device, options.precision)  # refuse fp16 on CPU before any work

    rank, world = dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    n = len(paths)
    start, stop = rank * n // world, (rank + 1) * n // world
    target = hdf5.shard_path(output, rank) if world > 1 else Path(output)

    def batches_from(first: int) -> Iterator[ImageBatch]:
        return iter(image_batches(paths, data_config, batch_size=options.batch_size, workers=options.workers,
                                  pin_memory=device.type == "cuda", start=first, stop=stop))

    def analysed(batch: ImageBatch) -> tuple[dict[str, torch.Tensor], Any]:
        return _analyse(model, batch.images.to(device, non_blocking=True), plan, options.precision)

    # The geometry and every row's shape come from the first batch's own results (analysed
    # before the file is opened, then written as its first rows). A resumed file starts
    # after rows only the file knows, and an empty shard has no batch: those take them from
    # one zero image through the same pipeline instead; so does an existing file the writer
    # will refuse, which then costs one image, not a batch. (Ctrl-C during the first batch
    # leaves no file: nothing was committed.)
    batches: Iterator[ImageBatch] | None = None
    first: tuple[ImageBatch, dict[str, torch.Tensor]] | None = None
    t0 = time.perf_counter()
    if not options.resume and stop > start and (options.overwrite or not target.exists()):
        if total is not None:  # a progress bar shows while the first batch runs (nothing to resume)
            total(stop - start)
        batches = batches_from(start)
        batch0 = next(batches)
        probe, layout = analysed(batch0)
        first = (batch0, probe)
    else:
        size = tuple(int(v) for v in data_config["input_size"])
        probe, layout = _analyse(model, torch.zeros(1, *size, device=device), plan, options.precision)
    weights = _weights_fingerprint(model)
    name = model_name or _model_name(model)
    config = {
        "model": name, "weights_sha256": weights,
        "checkpoint": str(checkpoint) if checkpoint else "",
        "analyses": list(plan.analyses), "full_layers": list(plan.full_layers),
        "full_heads": None if plan.full_heads is None else list(plan.full_heads),
        "dtype": options.dtype, "compression": options.compression, "precision": options.precision,
        "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()},
        "inputs": {"count": n, "sha256": hashlib.sha256("\n".join(rels).encode()).hexdigest()},
        "shard": {"rank": rank, "world_size": world, "start": start, "stop": stop},
    }
    columns = _columns(probe, options, plan)
    attrs = _attrs(model, name, data_config, layout, plan, options, checkpoint, pretrained, command,
                   n_classes=probe["logits"].shape[-1] if "logits" in probe else None)
    attrs["input_root"] = str(Path(inputs.root).resolve())
    attrs["random_weights"] = bool(random_weights)
    if world > 1:
        attrs.update(shard_rank=rank, shard_world_size=world, shard_offset=start)

    interrupted = False
    small = 0
    method = "rollout" if "rollout" in plan.analyses else ("cls" if "cls" in plan.analyses else None)
    overlay_root = Path(options.overlays) if options.overlays else None
    taken: set[Path] = set()
    with hdf5.ExportWriter(target, columns, attrs, config, planned_rows=stop - start,
                           resume=options.resume, overwrite=options.overwrite) as writer:
        resumed = writer.committed
        if total is not None and first is None:  # (the first-batch path gave it above)
            total(stop - start - resumed)
        try:
            if batches is None:
                batches = batches_from(start + resumed)
            for batch in itertools.chain([first[0]] if first else [], batches):
                small += len(batch.smaller_than_input(data_config))
                if first is not None:
                    rows, first = first[1], None
                else:
                    rows, _ = analysed(batch)
                ok = batch.ok.numpy().astype(bool)
                idx = batch.index.tolist()
                data: dict[str, Any] = {"images/path": [rels[i] for i in idx], "images/ok": ok,
                                        "images/error": list(batch.errors)}
                for k, v in rows.items():
                    v = v.numpy()
                    v[~ok] = np.nan
                    data[k] = v
                writer.append(data)
                if overlay_root is not None and method is not None:
                    maps = rows["rollout"] if method == "rollout" else rows["cls_attention"][:, -1].mean(1)
                    _write_overlays(overlay_root, batch.paths, [rels[i] for i in idx], ok, maps.numpy(),
                                    method, data_config, name, options.overwrite, taken,
                                    plan.num_layers - 1 if method == "cls" else None)
                if progress is not None:
                    progress(len(idx))
        except KeyboardInterrupt:
            interrupted = True
        okcol = np.asarray(writer._file["images/ok"][: writer.committed], dtype=bool)  # type: ignore[index]
        committed = writer.committed
    seconds = time.perf_counter() - t0
    counts = torch.tensor([committed, int(okcol.sum()), int((~okcol).sum()), committed - resumed,
                           resumed, int(interrupted), small], dtype=torch.long)
    shards: list[Path] = []
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
        shards = [hdf5.shard_path(output, r) for r in range(world)]
        if rank == 0 and not int(counts[5]):
            hdf5.merge_shards(output, shards, virtual=options.virtual, command=command)
        dist.barrier()
    return ExportSummary(Path(output), int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]),
                         int(counts[4]), seconds, bool(counts[5]), shards, int(counts[6]))


def _columns(probe: dict[str, torch.Tensor], options: ExportOptions, plan: _Plan) -> list:
    from .export.hdf5 import Column, chunk_rows_for

    comp = None if options.compression == "none" else options.compression
    bs = options.batch_size
    small = chunk_rows_for(64, bs, target=64 * 1024)
    cols = [Column("images/path", (), "str", small), Column("images/ok", (), "bool", small),
            Column("images/error", (), "str", small)]
    for key, value in probe.items():
        shape = tuple(value.shape[1:])
        if key == "logits":
            cols.append(Column(key, shape, "float32", chunk_rows_for(4 * value[0].numel(), bs), compression=comp))
        elif key == "cls_attention":  # chunk = rows x one layer: cheap "one layer across images" reads
            per_layer = int(np.prod(shape[1:])) * np.dtype(options.dtype).itemsize
            cols.append(Column(key, shape, options.dtype, chunk_rows_for(per_layer, bs), chunk_inner=1,
                               compression=comp))
        elif key in ("rollout", "attention_distance"):
            cols.append(Column(key, shape, "float32", chunk_rows_for(4 * value[0].numel(), bs), compression=comp))
        elif key.startswith("attention/layer_"):  # chunked per image (DESIGN §5)
            layer = int(key.rsplit("_", 1)[1])
            heads = list(plan.full_heads) if plan.full_heads is not None else list(range(shape[0]))
            cols.append(Column(key, shape, options.dtype, 1, compression=comp or "gzip",
                               attrs={"layer": layer, "heads": heads}))
    return cols


def _attrs(model: nn.Module, name: str, data_config: dict[str, Any], layout: Any, plan: _Plan,
           options: ExportOptions, checkpoint: Any, pretrained: bool | None, command: str | None,
           n_classes: int | None) -> dict[str, Any]:
    from . import models as _models

    size = data_config["input_size"]
    attrs: dict[str, Any] = {
        "model": name, "checkpoint": str(checkpoint) if checkpoint else "",
        "pretrained": bool(pretrained) if pretrained is not None else False,
        "input_size": [int(size[-2]), int(size[-1])],
        "mean": [float(v) for v in data_config.get("mean", ())],
        "std": [float(v) for v in data_config.get("std", ())],
        "num_layers": plan.num_layers,
        "command": command if command is not None else "vitlens.batch.run_export",
        "analyses": list(plan.analyses),
        "attention_dtype": options.dtype, "precision": options.precision,
        "has_cls": plan.has_cls,
    }
    if layout is not None:
        attrs.update(patch_size=list(layout.patch_size), grid_size=list(layout.grid_size),
                     num_prefix_tokens=layout.num_prefix_tokens, prefix_names=list(layout.prefix_names))
    from .capture.adapters import adapter_for

    adapter = adapter_for(model)
    if layout is None:  # logits only: geometry from the adapter's description of the model
        desc = adapter.describe()
        attrs.update(patch_size=list(desc.layout.patch_size), grid_size=list(desc.layout.grid_size),
                     num_prefix_tokens=desc.num_prefix_tokens, prefix_names=[])
    attrs["num_heads"] = int(max(int(adapter.heads_of(i)) for i in range(plan.num_layers)))
    if not plan.has_cls:
        attrs["cls_attention_omitted"] = "the model has no CLS token"
    elif "cls" not in plan.analyses:
        attrs["cls_attention_omitted"] = "not requested (the analyses did not include 'cls')"
    if plan.no_logits:
        attrs["logits_omitted"] = plan.no_logits
    names = _models.class_names(model)
    if names:
        attrs["class_names"] = list(names)
    if n_classes is not None:
        attrs["num_classes"] = int(n_classes)
    if plan.full_layers:
        attrs["full_layers"] = list(plan.full_layers)
        attrs["full_heads"] = list(plan.full_heads) if plan.full_heads is not None else "all"
    return attrs


if __name__ == "__main__":  # the library has no command line of its own; the CLI does
    sys.exit("vitlens: `python -m vitlens.batch` is gone: the export command line lives in the CLI. Run "
             "`vitlens export INPUT OUTPUT.h5 ...`; under torchrun, launch the module vitlens.cli "
             "(`torchrun ... -m vitlens.cli export INPUT OUTPUT.h5 ...`, from outside a vitlens source "
             "checkout); from Python, call vitlens.batch.run_export")
