"""Cost of the explanation methods as ratios against the plain timm forward, measured in the same run.

    python benchmarks/explain_cost.py [--model vit_small_patch16_224] [--batch 16] [--repeats 7]

Cases (each a whole ``vitlens.explain`` call on the batch, model state preserved):
``plain`` (``model(x)`` under ``torch.no_grad``, timm's fused attention: the baseline),
``rollout``, ``rollout-discard`` (``discard_ratio=0.9``, the kthvalue threshold),
``rollout-discard-topk`` (the same with the previous full-topk discard swapped in, for
comparison), ``chefer``, ``attnlrp``, ``cp-lrp``, ``attnlrp-gamma`` (``gamma=0.25``).

The cases take turns within each round (order rotated per round, one warm-up each);
the ratio printed is the median over rounds of the case's time over plain's time in the
same round, with quartiles and best-of, as ``capture_overhead.py`` does, and the
median ratio of process CPU time (what a loaded machine distorts least). CPU,
random-init weights (the weights do not change the cost). A benchmark prints numbers;
it never fails.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch


def old_discard_lowest(fused: torch.Tensor, discard_ratio: float, keep_col: int | None) -> torch.Tensor:
    """The discard before the kthvalue threshold: a full topk of the k smallest entries (for comparison)."""
    if discard_ratio <= 0:
        return fused
    b, t, _ = fused.shape
    ranked = fused.clone()
    n_candidates = t * t
    if keep_col is not None:
        ranked[:, :, keep_col] = float("inf")
        n_candidates = t * (t - 1)
    k = int(discard_ratio * n_candidates)
    if k == 0:
        return fused
    idx = ranked.reshape(b, -1).topk(k, dim=-1, largest=False).indices
    return fused.reshape(b, -1).scatter(1, idx, 0.0).reshape(b, t, t)


@contextmanager
def _topk_discard():
    import importlib

    mod = importlib.import_module("vitlens.analysis.rollout")
    new = mod.discard_lowest
    mod.discard_lowest = old_discard_lowest
    try:
        yield
    finally:
        mod.discard_lowest = new


def main() -> None:
    import timm

    import vitlens

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cases", default=None, help="comma-separated subset of the cases (plain is always run)")
    ap.add_argument("--warmup-batch", type=int, default=2, help="images in each case's warm-up call")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(args.batch, 3, *model.pretrained_cfg["input_size"][1:])

    def plain():
        with torch.no_grad():
            model(x)

    def topk_discard():
        with _topk_discard():
            vitlens.explain(model, x, "rollout", discard_ratio=0.9)

    cases = {
        "plain": plain,
        "rollout": lambda: vitlens.explain(model, x, "rollout"),
        "rollout-discard": lambda: vitlens.explain(model, x, "rollout", discard_ratio=0.9),
        "rollout-discard-topk": topk_discard,
        "chefer": lambda: vitlens.explain(model, x, "chefer"),
        "attnlrp": lambda: vitlens.explain(model, x, "attnlrp"),
        "cp-lrp": lambda: vitlens.explain(model, x, "cp-lrp"),
        "attnlrp-gamma": lambda: vitlens.explain(model, x, "attnlrp", gamma=0.25),
    }
    if args.cases:
        keep = ["plain"] + [c for c in args.cases.split(",") if c and c != "plain"]
        unknown = [c for c in keep if c not in cases]
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; cases: {', '.join(cases)}")
        cases = {c: cases[c] for c in keep}
    full = x
    x = full[:args.warmup_batch]
    for fn in cases.values():
        fn()   # warm-up (a small batch: kernels, lazy imports, allocator)
    x = full
    times: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {c: [] for c in cases}
    names = list(cases)
    for r in range(args.repeats):
        for c in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            cases[c]()
            times[c].append(time.perf_counter() - t0)
            cpu[c].append(time.process_time() - c0)
        print(f"  round {r + 1}/{args.repeats} done", flush=True)
    plain_med = statistics.median(times["plain"])
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}: "
          f"plain forward {plain_med * 1e3:.0f} ms (median of {args.repeats})")
    for c in names[1:]:
        r = [a / b for a, b in zip(times[c], times["plain"])]
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        best = min(times[c]) / min(times["plain"])
        rc = statistics.median(a / b for a, b in zip(cpu[c], cpu["plain"]))
        print(f"  {c:>21}: {statistics.median(r):.2f}x plain (quartiles {q[0]:.2f}-{q[2]:.2f}, best-of {best:.2f}x; "
              f"{statistics.median(times[c]) * 1e3:.0f} ms); CPU time {rc:.2f}x plain", flush=True)


if __name__ == "__main__":
    main()
