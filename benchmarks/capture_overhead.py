"""Capture overhead as ratios against the plain timm forward, measured in the same run.

    python benchmarks/capture_overhead.py [--batch 32] [--repeats 11] [--models vit_small_patch16_224 ...]
    python benchmarks/capture_overhead.py --hf      # transformers ViT-B/16, random init, SDPA (hf:vit-base)

Prints one line per case: ``full`` (a plain capture keeping every layer's ``[B, H, T, T]``),
``cls_rows`` (``rows="prefix"``), ``reduce`` (``reduce=["cls", "rollout", "distance"]``:
each layer reduced as it is recorded, nothing kept whole). Then the depth check: the
memory one forward adds with a 12-layer and a 24-layer ViT-S (``full`` grows with depth,
``reduce`` must not). The cases of a model take turns within each of --repeats
rounds (after one warm-up each, order rotated per round); the ratio printed is the
median over rounds of the case's time over plain's time in the same round, with its
quartiles and the best-of ratio (fastest over fastest), so a shared machine's slow
spells do not decide the figure. Runs with timm's fused attention on (its default),
torch.no_grad, CPU, random-init weights (the weights do not change the cost).

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


def _interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Times of each function over ``repeats`` rounds, every case once per round.

    Round-robin instead of case after case, and the order rotated every round, so a
    drift of the machine's speed (other load, frequency, a neighbour on the host) falls
    on every case alike and no case always runs right after the same other one.
    """
    for fn in fns.values():
        fn()  # warm-up
    cases = list(fns)
    times: dict[str, list[float]] = {case: [] for case in cases}
    for r in range(repeats):
        for case in cases[r % len(cases):] + cases[:r % len(cases)]:
            t0 = time.perf_counter()
            fns[case]()
            times[case].append(time.perf_counter() - t0)
    return times


def _ratios(times: dict[str, list[float]], case: str, base: str = "plain") -> tuple[float, float, float, float]:
    """``(median, q1, q3, best)`` of the case's cost relative to ``base``.

    The median and quartiles are of the per-round ratios (each round's case time over
    the same round's base time: pairs measured seconds apart, so a slow spell of a
    shared machine cancels out); ``best`` is fastest case over fastest base, the figure
    least touched by interference (interference only ever adds time).
    """
    r = sorted(c / b for c, b in zip(times[case], times[base]))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return statistics.median(r), q[0], q[2], min(times[case]) / min(times[base])


#: ``--models hf:NAME``: random-init Hugging Face transformers models from their default configs
#: (``ViTConfig()`` is ViT-B/16 at 224 px, ``SwinConfig()`` Swin-T), default attention (SDPA).
HF_MODELS = {"hf:vit-base": ("ViTConfig", "ViTForImageClassification"),
             "hf:swin-tiny": ("SwinConfig", "SwinForImageClassification")}


def _build(name: str, batch: int):
    """``name`` is a timm name, optionally with ``:depth=N`` (e.g. ``vit_small_patch16_224:depth=24``),
    or one of :data:`HF_MODELS`."""
    torch.manual_seed(0)
    if name in HF_MODELS:
        import transformers

        config_cls, model_cls = HF_MODELS[name]
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)()).eval()
        size = model.config.image_size
        return model, torch.randn(batch, 3, size, size)
    import timm

    name, _, extra = name.partition(":")
    kwargs = {k: int(v) for k, v in (kv.split("=") for kv in extra.split(",") if kv)}
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    size = model.pretrained_cfg["input_size"][-2:]
    return model, torch.randn(batch, 3, *size)


def _case_fn(model, x, case: str):
    import vitlens

    if case == "plain":
        return lambda: model(x)
    kwargs = {"full": {}, "cls_rows": {"rows": "prefix"}, "reduce": {"reduce": ["cls", "rollout", "distance"]},
              "reduce_nocls": {"reduce": ["rollout", "distance"]}}[case]

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
    from vitlens.capture.adapters import adapter_for

    cases = ("full", "cls_rows", "reduce") if adapter_for(model).num_prefix_tokens else ("full", "reduce_nocls")
    with torch.no_grad():
        t = _interleaved({case: _case_fn(model, x, case) for case in ("plain", *cases)}, repeats)
    plain = statistics.median(t["plain"])
    for case in cases:
        med, q1, q3, best = _ratios(t, case)
        line = (f"{name} batch {batch} {case:>8}: {med:.3f}x plain (median of {repeats} paired rounds, "
                f"quartiles {q1:.3f}-{q3:.3f}; best-of {best:.3f}x; "
                f"{statistics.median(t[case]) * 1e3:.0f} ms vs {plain * 1e3:.0f} ms)")
        if memory:
            plain_mem, case_mem = _peak(name, batch, "plain"), _peak(name, batch, case)
            line += f"; peak memory {case_mem / max(plain_mem, 1e-9):.2f}x plain ({case_mem:.0f} vs {plain_mem:.0f} MiB)"
        print(line, flush=True)


def bench_depth(batch: int) -> None:
    """Memory one forward adds (fresh processes) for a 12- and a 24-layer ViT-S: full cache vs reduce."""
    got = {(d, case): _peak(f"vit_small_patch16_224:depth={d}", batch, case)
           for d in (12, 24) for case in ("plain", "full", "reduce")}
    for case in ("full", "reduce"):
        extra = {d: got[d, case] - got[d, "plain"] for d in (12, 24)}
        print(f"depth check, vit_small_patch16_224 batch {batch}, {case}: one forward adds {extra[12]:.0f} MiB over "
              f"plain with 12 layers, {extra[24]:.0f} MiB with 24 layers (peak {got[12, case]:.0f} / "
              f"{got[24, case]:.0f} MiB; plain {got[12, 'plain']:.0f} / {got[24, 'plain']:.0f} MiB)", flush=True)


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

    def read_once():  # the floor: every attention entry read once, nothing else
        return [a.sum() for a in attn]

    t = _interleaved({"batched": lambda: vitlens.rollout(cache), "loop": loop, "read": read_once}, repeats)
    med, q1, q3, best = _ratios(t, "loop", base="batched")
    print(f"rollout of {images} images: batched {statistics.median(t['batched']) * 1e3:.0f} ms vs per-image loop "
          f"{statistics.median(t['loop']) * 1e3:.0f} ms = {med:.1f}x faster (median of {repeats} paired rounds, "
          f"quartiles {q1:.1f}-{q3:.1f}; best-of {best:.1f}x)", flush=True)
    floor = statistics.median(t["read"])
    gib = sum(a.numel() * a.element_size() for a in attn) / 2**30
    print(f"  floor: reading the {gib:.2f} GiB of attention once takes {floor * 1e3:.0f} ms, so on this machine "
          f"no rollout can beat the loop by more than {_ratios(t, 'loop', base='read')[0]:.1f}x; batched rollout "
          f"is {_ratios(t, 'batched', base='read')[0]:.2f}x that floor", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        _memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--models", nargs="+",
                    default=["vit_small_patch16_224", "vit_base_patch16_224", "swin_tiny_patch4_window7_224"])
    ap.add_argument("--hf", action="store_true",
                    help="only the transformers ViT-B/16 (random init, SDPA): --models hf:vit-base --no-rollout")
    ap.add_argument("--no-rollout", action="store_true", help="skip the rollout benchmark")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--rollout-images", type=int, default=64)
    ap.add_argument("--depth-batch", type=int, default=8, help="batch of the 12- vs 24-layer memory check")
    args = ap.parse_args()
    if args.hf:
        args.models, args.no_rollout = ["hf:vit-base"], True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)
    for name in args.models:
        bench_model(name, args.batch, args.repeats, memory=not args.no_memory)
    if not args.no_memory and not args.hf:
        bench_depth(args.depth_batch)
    if not args.no_rollout:
        bench_rollout(args.rollout_images, args.repeats)


if __name__ == "__main__":
    main()
