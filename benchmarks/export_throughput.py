"""``vitlens export`` peak memory and throughput against plain inference over the same DataLoader.

    python benchmarks/export_throughput.py [--models vit_small_patch16_224 vit_base_patch16_224
                                            swin_tiny_patch4_window7_224] [--batch 32] [--n 96]
                                           [--workers 1] [--repeats 3] [--modes export export-full]
                                           [--no-memory] [--no-speed]

Runs of each model over the *same* images and DataLoader
(``vitlens.data.image_batches``, same batch size and workers):

* ``plain``: ``model(x)`` under ``torch.no_grad`` (timm's fused attention, its default);
* ``export``: ``vitlens.batch.run_export`` with the default analyses (logits, cls, rollout,
  distance; float16 maps, gzip), which reduces each layer's attention as it is recorded;
* ``export-full``: the same with ``ExportOptions(reduce=False)``, the older path that keeps
  every layer's ``[B, H, T, T]`` for the batch before analysing it (the "before");
* ``export-chunked``: ``ExportOptions(chunk="auto")``, the layers computed in image chunks
  (``capture(chunk=...)``), which the export does by default on accelerators only;
* ``export-whole``: ``ExportOptions(chunk=32)``, the layers computed by vitlens into its reused
  buffers a batch (of up to 32) at a time.

Peak memory: each run in a fresh process (``VmHWM``, peak RSS, as ``/usr/bin/time`` reports
it), printed as a ratio to ``plain`` (target for ``export``: <= 1.1x on ViT-S/ViT-B).
Throughput: images/s of the three runs alternating in one process over ``--repeats``
rounds (order rotated), the ratio being the median of per-round ratios to ``plain``
(target for ``export``: >= 0.95x), since a shared machine's speed drifts between rounds; also
the same ratio by this process's CPU time (all its torch threads; the DataLoader workers are
other processes), which other agents' load on a shared machine disturbs far less than
wall-clock time.
Then the bytes of attention one batch holds, predicted by
:func:`vitlens.analysis.reductions.held_bytes_estimate` (the formula the tests check
against counted live tensor storage), for ViT-L/14 at 336 px and batch 64, before and after.

``--streaming 2000 10000``: peak RSS of the demo model's export of those image counts, each in a
fresh process: streaming means it must not grow with the count.

Images: ``--images DIR`` (any folder), else the CIFAR-10 test JPEGs from the shared data
archive extracted to a temporary folder (resized to the model's input by its transform),
else generated noise images. Random-init weights (the weights do not change the cost).
A benchmark prints numbers; it never fails.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_overhead import _interleaved, _ratios  # noqa: E402  (the same paired-round statistics)

MODES = ("plain", "export", "export-full", "export-chunked", "export-whole")


def _images(folder: str | None, need: int, tmp: Path) -> Path:
    if folder:
        return Path(folder)
    root = tmp / "images"
    root.mkdir(exist_ok=True)
    archive = None
    for base in [Path(os.environ.get("VITLENS_SHARED_DATA", "/nonexistent")), *[p / "shared" / "data" for p in
                 Path(__file__).resolve().parents], Path("/work/shared/data")]:
        if (base / "cifar10" / "cifar10-jpg.tar.gz").is_file():
            archive = base / "cifar10" / "cifar10-jpg.tar.gz"
            break
    written = 0
    if archive is not None:
        with tarfile.open(archive) as tar:
            for m in tar:
                if written >= need:
                    break
                if m.isfile() and m.name.endswith(".jpg") and Path(m.name).parts[0] == "test":
                    dest = root / m.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(tar.extractfile(m).read())
                    written += 1
    else:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(need):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:06d}.png")
    return root


def _load(name: str):
    import torch

    import vitlens

    if name == "demo":
        return vitlens.load_model("demo", device="cpu")
    torch.manual_seed(0)
    return vitlens.load_model(name, pretrained=False, device="cpu")


def _run(mode: str, model, cfg, root: Path, paths, batch: int, workers: int, out: Path) -> tuple[float, float]:
    """One pass of ``mode`` over ``paths``; returns (images per wall-clock second, images per CPU
    second of this process: every torch thread's time, not the DataLoader workers')."""
    import torch

    from vitlens.batch import ExportOptions, run_export
    from vitlens.data import Inputs, image_batches

    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "plain":
        n = 0
        with torch.no_grad():
            for b in image_batches(paths, cfg, batch_size=batch, workers=workers):
                model(b.images)
                n += len(b.index)
    else:
        chunk = {"export-chunked": "auto", "export-whole": 32}.get(mode)
        n = run_export(model, cfg, Inputs(root, paths), out,
                       ExportOptions(batch_size=batch, workers=workers, dtype="float16", overwrite=True,
                                     reduce=mode != "export-full", chunk=chunk)).rows
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _memory_child(mode: str, name: str, root: str, n: int, batch: int, workers: int, out: str) -> None:
    """Runs in a fresh process: one pass of ``mode``; prints peak RSS and images/s."""
    from vitlens.data import resolve_inputs

    model, cfg = _load(name)
    inputs = resolve_inputs(root)
    loaded = _status_kib("VmRSS")
    rate, cpu_rate = _run(mode, model, cfg, Path(inputs.root), inputs.paths[:n], batch, workers, Path(out))
    print(json.dumps({"vmhwm_mib": _status_kib("VmHWM") / 1024, "loaded_mib": loaded / 1024, "rate": rate,
                      "cpu_rate": cpu_rate}))


def _memory(name: str, root: Path, n: int, batch: int, workers: int, tmp: Path,
            modes: tuple[str, ...]) -> dict[str, dict]:
    got: dict[str, dict] = {}
    for mode in modes:
        out = subprocess.run([sys.executable, __file__, "--memory-child", mode, name, str(root), str(n), str(batch),
                              str(workers), str(tmp / f"mem-{mode}.h5")], capture_output=True, text=True)
        try:
            got[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        except Exception:  # noqa: BLE001 - a benchmark reports, never fails
            print(f"{name} {mode}: memory run failed: {out.stderr[-800:]}", flush=True)
    return got


def _predictions() -> None:
    import torch

    from vitlens.analysis.reductions import held_bytes_estimate
    from vitlens.capture.adapters.generic import chunk_images

    gib = 2 ** 30
    for label, (L, H, T, B) in {"ViT-S/16@224 batch 32": (12, 6, 197, 32),
                                "ViT-B/16@224 batch 32": (12, 12, 197, 32),
                                "ViT-L/16@224 batch 32 (24 layers)": (24, 16, 197, 32),
                                "ViT-L/14@336 batch 64": (24, 16, 577, 64)}.items():
        e = held_bytes_estimate(batch=B, layers=L, heads=H, tokens=T, prefix=1)
        chunks = {dev: chunk_images("auto", B, H * T * T * 4, torch.device(dev)) for dev in ("cpu", "cuda")}
        within = {dev: held_bytes_estimate(batch=B, layers=L, heads=H, tokens=T, prefix=1,
                                           chunk=n)["layer_transient"] for dev, n in chunks.items()}
        print(f"predicted attention held per batch, {label}: before (full cache, float32) {e['full'] / gib:.2f} GiB; "
              f"after (reduce on record) {e['reduced_peak'] / 2**20:.0f} MiB held across layers "
              f"+ within one layer {e['layer_transient'] / 2**20:.0f} MiB computed whole, "
              f"{within['cuda'] / 2**20:.0f} MiB in chunks of {chunks['cuda']} images (chunk='auto' on a GPU), "
              f"{within['cpu'] / 2**20:.1f} MiB in chunks of {chunks['cpu']} (CPU)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="folder of images (default: CIFAR-10 test JPEGs)")
    ap.add_argument("--n", type=int, default=96, help="images per run")
    ap.add_argument("--models", nargs="+",
                    default=["vit_small_patch16_224", "vit_base_patch16_224", "swin_tiny_patch4_window7_224"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", choices=MODES[1:], default=list(MODES[1:]),
                    help="the runs measured against plain, in fresh processes and in the throughput rounds "
                         "(fewer: more rounds in the same time)")
    ap.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    ap.add_argument("--no-speed", action="store_true", help="skip the in-process throughput rounds")
    ap.add_argument("--streaming", type=int, nargs="*", default=[],
                    help="image counts for the demo model's streaming peak-RSS check, e.g. 2000 10000")
    ap.add_argument("--memory-child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        mode, name, root, n, batch, workers, out = args.memory_child
        _memory_child(mode, name, root, int(n), int(batch), int(workers), out)
        return

    import torch

    from vitlens.data import resolve_inputs

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"batch {args.batch}, workers {args.workers}, {args.n} images per run", flush=True)
    _predictions()
    with tempfile.TemporaryDirectory(prefix="vitlens-bench-") as tmpdir:
        tmp = Path(tmpdir)
        root = _images(args.images, max([args.n, *args.streaming]) if args.images is None else 0, tmp)
        inputs = resolve_inputs(root)
        paths = inputs.paths[: args.n]
        for count in args.streaming:
            out = subprocess.run([sys.executable, __file__, "--memory-child", "export", "demo", str(inputs.root),
                                  str(count), str(args.batch), str(args.workers), str(tmp / "stream.h5")],
                                 capture_output=True, text=True)
            try:
                info = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"demo: peak RSS exporting {min(count, len(inputs.paths))} images: {info['vmhwm_mib']:.0f} MiB "
                      f"({info['rate']:.0f} img/s)", flush=True)
            except Exception:  # noqa: BLE001
                print(f"demo: streaming run of {count} images failed: {out.stderr[-500:]}", flush=True)
        modes = ("plain", *(m for m in MODES[1:] if m in args.modes))
        for name in args.models:
            if not args.no_memory:
                mem = _memory(name, Path(inputs.root), args.n, args.batch, args.workers, tmp, modes)
                if "plain" in mem:
                    p = mem["plain"]["vmhwm_mib"]
                    parts = [f"{mode} {m['vmhwm_mib']:.0f} MiB = {m['vmhwm_mib'] / p:.2f}x"
                             for mode, m in mem.items()]
                    print(f"{name}: peak RSS, fresh processes (model loaded: {mem['plain']['loaded_mib']:.0f} MiB): "
                          + ", ".join(parts) + " (target export <= 1.1x plain)", flush=True)
                    parts = [f"{mode} {m['rate']:.2f} img/s wall, {m['cpu_rate']:.2f} img/CPU-s "
                             f"({m['cpu_rate'] / mem['plain']['cpu_rate']:.3f}x plain)" for mode, m in mem.items()]
                    print(f"{name}: the same single passes: " + ", ".join(parts), flush=True)
            if args.no_speed:
                continue
            try:
                model, cfg = _load(name)
            except Exception as e:  # noqa: BLE001 - a benchmark reports, never fails
                print(f"{name}: skipped ({type(e).__name__}: {e})")
                continue
            rates: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}

            def case(mode: str):
                return lambda: rates[mode].append(
                    _run(mode, model, cfg, Path(inputs.root), paths, args.batch, args.workers, tmp / f"{mode}.h5"))

            t = _interleaved({mode: case(mode) for mode in modes}, args.repeats)
            cpu = {mode: [len(paths) / r[1] for r in rates[mode][1:]] for mode in modes}   # CPU seconds per pass
            line = [f"{name}: plain {statistics.median(r[0] for r in rates['plain'][1:]):.2f} img/s"]
            for mode in modes[1:]:
                med, q1, q3, best = _ratios(t, mode)
                cmed = _ratios(cpu, mode)[0]
                line.append(f"{mode} {statistics.median(r[0] for r in rates[mode][1:]):.2f} img/s, throughput "
                            f"{1 / med:.3f}x plain (rounds {1 / q3:.3f}-{1 / q1:.3f}, best-of {1 / best:.3f}x; "
                            f"by this process's CPU time {1 / cmed:.3f}x)")
            print("; ".join(line) + f" (median of {args.repeats} paired rounds; target export >= 0.95x)", flush=True)


if __name__ == "__main__":
    main()
