"""``vitlens export`` throughput, peak memory and file size, against plain timm inference in the same run.

    python benchmarks/export_throughput.py [--images DIR] [--n 2000] [--models demo vit_small_patch16_224]
                                           [--batch 64] [--workers 1] [--repeats 3] [--memory 2000 10000]

* Throughput: images/s of ``vitlens.batch.run_export`` (logits, cls, rollout, distance;
  float16 maps, gzip) and of a plain ``model(x)`` loop over the *same* DataLoader
  (``vitlens.data.image_batches``, same batch size and workers) and the same images,
  alternating, median of ``--repeats``; the ratio export / plain (target >= 0.85).
* Peak memory: ``VmHWM`` (peak RSS) of a fresh subprocess exporting ``--memory`` image
  counts (e.g. 2,000 vs 10,000): streaming means it must not grow with the count.
* Bytes per image on disk.

Images: ``--images DIR`` (any folder), else the CIFAR-10 test JPEGs from the shared data
archive extracted to a temporary folder, else generated noise images. Random-init
weights for timm models (the weights do not change the cost); ``demo`` is the bundled
CIFAR-10 ViT. A benchmark prints numbers; it never fails.
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
        # the test split holds 10,000; repeat it (under other names) if more are asked for
        base_files = sorted(root.rglob("*.jpg"))
        k = 0
        while written < need and base_files:
            src = base_files[k % len(base_files)]
            dest = root / "copies" / f"{k // len(base_files)}" / f"{src.parent.name}_{src.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dest) if not dest.exists() else None
            written += 1
            k += 1
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


def _plain(model, cfg, paths, batch: int, workers: int) -> float:
    import torch

    from vitlens.data import image_batches

    t0 = time.perf_counter()
    n = 0
    with torch.no_grad():
        for b in image_batches(paths, cfg, batch_size=batch, workers=workers):
            model(b.images)
            n += len(b.index)
    return n / (time.perf_counter() - t0)


def _export(model, cfg, paths, root, batch: int, workers: int, out: Path) -> tuple[float, int]:
    from vitlens.batch import ExportOptions, run_export
    from vitlens.data import Inputs

    t0 = time.perf_counter()
    s = run_export(model, cfg, Inputs(root, paths), out,
                   ExportOptions(batch_size=batch, workers=workers, dtype="float16", overwrite=True))
    return s.rows / (time.perf_counter() - t0), out.stat().st_size


def _vmhwm_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _memory_child(name: str, root: str, n: int, batch: int, workers: int, out: str) -> None:
    from vitlens.data import resolve_inputs

    model, cfg = _load(name)
    inputs = resolve_inputs(root)
    paths = inputs.paths[:n]
    _export(model, cfg, paths, inputs.root, batch, workers, Path(out))
    print(json.dumps({"vmhwm_mib": _vmhwm_kib() / 1024, "n": len(paths)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="folder of images (default: CIFAR-10 test JPEGs)")
    ap.add_argument("--n", type=int, default=2000, help="images per throughput run (demo model)")
    ap.add_argument("--n-large", type=int, default=128, help="images per run for models other than demo")
    ap.add_argument("--models", nargs="+", default=["demo", "vit_small_patch16_224"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--memory", type=int, nargs="*", default=[2000, 10000], help="image counts for peak RSS")
    ap.add_argument("--memory-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        name, root, n, batch, workers, out = args.memory_child
        _memory_child(name, root, int(n), int(batch), int(workers), out)
        return

    import torch

    from vitlens.data import resolve_inputs

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"batch {args.batch}, workers {args.workers}")
    with tempfile.TemporaryDirectory(prefix="vitlens-bench-") as tmpdir:
        tmp = Path(tmpdir)
        need = max([args.n, *args.memory]) if args.images is None else 0
        root = _images(args.images, need, tmp)
        inputs = resolve_inputs(root)
        for name in args.models:
            try:
                model, cfg = _load(name)
            except Exception as e:  # noqa: BLE001 - a benchmark reports, never fails
                print(f"{name}: skipped ({type(e).__name__}: {e})")
                continue
            n = args.n if name == "demo" else args.n_large
            paths = inputs.paths[:n]
            plain, export, size = [], [], 0
            _plain(model, cfg, paths[: args.batch], args.batch, args.workers)  # warm-up
            for _ in range(args.repeats):
                plain.append(_plain(model, cfg, paths, args.batch, args.workers))
                rate, size = _export(model, cfg, paths, inputs.root, args.batch, args.workers, tmp / "bench.h5")
                export.append(rate)
            p, e = statistics.median(plain), statistics.median(export)
            print(f"{name}: {len(paths)} images, input {tuple(cfg['input_size'][1:])}: plain {p:.1f} img/s, "
                  f"export {e:.1f} img/s, ratio {e / p:.3f} (target >= 0.85); "
                  f"{size / len(paths):.0f} bytes/image on disk")
            if name == "demo" and args.memory:
                for count in args.memory:
                    out = subprocess.run(
                        [sys.executable, __file__, "--memory-child", name, str(root), str(count), str(args.batch),
                         str(args.workers), str(tmp / f"mem{count}.h5")], capture_output=True, text=True)
                    try:
                        info = json.loads(out.stdout.strip().splitlines()[-1])
                        print(f"{name}: peak RSS exporting {info['n']} images: {info['vmhwm_mib']:.0f} MiB "
                              f"(file {os.path.getsize(tmp / f'mem{count}.h5') / info['n']:.0f} bytes/image)")
                    except Exception:  # noqa: BLE001
                        print(f"{name}: memory run for {count} images failed: {out.stderr[-500:]}")


if __name__ == "__main__":
    main()
