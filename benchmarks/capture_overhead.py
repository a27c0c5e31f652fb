"""Capture overhead as ratios against the plain timm forward, measured in the same run.

    python benchmarks/capture_overhead.py [--batch 32] [--repeats 5] [--models vit_small_patch16_224 ...]

Prints one line per case. Times are medians over --repeats rounds after one warm-up (the
cases of a model take turns within each round, so drift hits them alike), with
timm's fused attention on (its default), torch.no_grad, CPU, random-init weights (the
weights do not change the cost).

Peak memory is what one forward adds on top of the model and input: each case runs in
a fresh subprocess (so every case starts equal) with glibc's mmap threshold fixed at
64 KiB (so freed tensors go back to the OS and RSS follows the live tensors); after a
warm-up call the kernel's RSS high-water mark is reset (``/proc/self/clear_refs``),
the case runs once keeping its result alive as a user would, and the figure is
``VmHWM`` minus the RSS before the call.
A benchmark prints numbers; it never fails.
"""
from __future__ import annotations

import argparse
import json
import gc
import os
import statistics
import subprocess
import sys
import time

import torch


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median time of each function, the cases taking turns in every round.

    Round-robin instead of case after case, so a drift of the machine's speed (other
    load, frequency, allocator warm-up) during the run falls on every case alike.
    """
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {case: [] for case in fns}
    for _ in range(repeats):
        for case, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[case].append(time.perf_counter() - t0)
    return {case: statistics.median(ts) for case, ts in times.items()}


def _build(name: str, batch: int):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"][-2:]
    return model, torch.randn(batch, 3, *size)


def _case_fn(model, x, case: str):
    import vitlens

    if case == "plain":
        return lambda: model(x)
    kwargs = {"full": {}, "cls_rows": {"rows": "prefix"}}[case]

    def run():
        with vitlens.capture(model, **kwargs) as cache:
            model(x)
        return cache
    return run


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(name: str, batch: int, case: str) -> None:
    """Runs in a subprocess: print what one call of `case` adds to the peak RSS (MiB)."""
    model, x = _build(name, batch)
    fn = _case_fn(model, x, case)
    with torch.no_grad():
        fn()  # warm-up: thread pools, kernels' one-time buffers
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS")
        keep = fn()  # keep the cache alive, as a user would
        peak = _status_kib("VmHWM")
    del keep
    print(json.dumps({"peak_mib": (peak - base) / 1024}))


def _peak(name: str, batch: int, case: str) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--memory-child", name, str(batch), case],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def bench_model(name: str, batch: int, repeats: int, memory: bool) -> None:
    model, x = _build(name, batch)
    cases = ("full", "cls_rows") if getattr(model, "num_prefix_tokens", 0) else ("full",)
    with torch.no_grad():
        t = _interleaved_medians({case: _case_fn(model, x, case) for case in ("plain", *cases)}, repeats)
    for case in cases:
        line = (f"{name} batch {batch} {case:>8}: {t[case] / t['plain']:.3f}x plain "
                f"({t[case] * 1e3:.0f} ms vs {t['plain'] * 1e3:.0f} ms)")
        if memory:
            plain_mem, case_mem = _peak(name, batch, "plain"), _peak(name, batch, case)
            line += f"; peak memory {case_mem / max(plain_mem, 1e-9):.2f}x plain ({case_mem:.0f} vs {plain_mem:.0f} MiB)"
        print(line, flush=True)


def bench_rollout(images: int, repeats: int) -> None:
    """Batched rollout vs a straightforward per-image loop (ViT-B/16 geometry: 12 layers, 12 heads, T=197)."""
    import vitlens
    from vitlens.capture.cache import AttentionCache, TokenLayout

    L, H, T = 12, 12, 197
    g = torch.Generator().manual_seed(0)
    attn = [torch.softmax(torch.randn(images, H, T, T, generator=g), -1) for _ in range(L)]
    cache = AttentionCache.from_tensors(attn, TokenLayout(1, ("cls",), (14, 14), (16, 16), (224, 224)))

    def loop():  # per image, per layer, as the reference implementations do it
        maps = []
        for b in range(images):
            R = torch.eye(T)
            for a in attn:
                fused = a[b].mean(0)
                ahat = 0.5 * fused + 0.5 * torch.eye(T)
                ahat = ahat / ahat.sum(-1, keepdim=True)
                R = ahat @ R
            m = R[0, 1:]
            maps.append((m / m.sum()).reshape(14, 14))
        return torch.stack(maps)

    t_batched = _median_time(lambda: vitlens.rollout(cache), repeats)
    t_loop = _median_time(loop, repeats)
    print(f"rollout of {images} images: batched {t_batched * 1e3:.0f} ms vs per-image loop "
          f"{t_loop * 1e3:.0f} ms = {t_loop / t_batched:.1f}x faster", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        _memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+",
                    default=["vit_small_patch16_224", "vit_base_patch16_224", "swin_tiny_patch4_window7_224"])
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--rollout-images", type=int, default=64)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)
    for name in args.models:
        bench_model(name, args.batch, args.repeats, memory=not args.no_memory)
    bench_rollout(args.rollout_images, args.repeats)


if __name__ == "__main__":
    main()
