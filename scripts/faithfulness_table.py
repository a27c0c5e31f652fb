"""Faithfulness table of every explain method on the demo model over CIFAR-10 test images.

Takes the first ``--per-class`` images (sorted file names 0000.jpg, 0001.jpg, ...) of
each class of the CIFAR-10 test split straight from the shared archive
(``shared/data/cifar10/cifar10-jpg.tar.gz``), in class-interleaved order (image 0 of
every class, then image 1 of every class, ...; so every chunk of 10·k images holds k
per class), preprocesses them with the demo model's own transform, and runs
:func:`vitlens.evaluate` with the true labels, ``--chunk`` images at a time. After each
chunk the JSON file (``--json``) is rewritten with every per-image AUC so far, so a
long run can be stopped and its table still printed. ``--merge`` prints the table of
one or more such files (e.g. one per method, run in parallel processes).

Commands behind the table in docs/faithfulness.md::

    for m in cls rollout grad-rollout chefer ig input-x-gradient gradcam random; do
        nice -n 10 python scripts/faithfulness_table.py --methods $m --json /tmp/ft/$m.json &
    done; wait
    python scripts/faithfulness_table.py --merge /tmp/ft/*.json

A stopped run continues where its JSON file ends with ``--resume`` (same chunks and
seeds as an uninterrupted run; wall time adds up). ``--chunks A:B`` runs only chunks
A..B-1 (same chunks and seeds as a whole run), so one method can run as several
processes; ``--merge`` joins the parts of a method (in image order, checked contiguous).
``--versus chefer`` adds a paired per-image comparison with that method (mean
difference, 95 % confidence interval, Wilcoxon signed-rank test).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ALL_METHODS = ("cls", "rollout", "grad-rollout", "chefer", "attnlrp", "cp-lrp", "ig", "input-x-gradient", "gradcam",
               "random")


def find_archive() -> Path:
    for parent in Path(__file__).resolve().parents:
        p = parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
        if p.exists():
            return p
    return Path("/work/shared/data/cifar10/cifar10-jpg.tar.gz")


def load_split(archive: Path, per_class: int, transform) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class-interleaved first ``per_class`` test images of each class: (images, labels, names)."""
    wanted: dict[str, list[str]] = {c: [] for c in CLASSES}
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar if m.isfile() and m.name.startswith("test/") and m.name.endswith(".jpg")}
        for name in sorted(members):
            cls = Path(name).parts[1]
            if len(wanted[cls]) < per_class:
                wanted[cls].append(name)
        xs, ys, names = [], [], []
        for i in range(per_class):
            for ci, cls in enumerate(CLASSES):
                name = wanted[cls][i]
                img = Image.open(io.BytesIO(tar.extractfile(members[name]).read())).convert("RGB")
                xs.append(transform(img))
                ys.append(ci)
                names.append(name)
    return torch.stack(xs), torch.tensor(ys), names


def run(args: argparse.Namespace) -> int:
    import vitlens

    torch.set_num_threads(args.threads)
    known = [m.name for m in vitlens.methods()]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in known]
    if unknown:
        print(f"note: methods not in this checkout, skipped: {', '.join(unknown)}", file=sys.stderr)
        methods = [m for m in methods if m in known]
    model, cfg = vitlens.load_model("demo", device="cpu")
    x, y, _ = load_split(Path(args.archive) if args.archive else find_archive(), args.per_class,
                         vitlens.make_transform(cfg))
    t0 = time.perf_counter()
    per_image: dict[str, dict[str, list[float]]] = {}
    curve_sum: dict[str, dict[str, list[float]]] = {}
    curve_x: dict[str, list[float]] = {}
    correct = 0
    first = 0
    if args.resume and args.json_path and Path(args.json_path).exists():
        # continue a stopped run: the same chunks and seeds as an uninterrupted one
        done = json.loads(Path(args.json_path).read_text())
        first = int(done["n_images"])
        if first % args.chunk or done["methods"] != methods or done["steps"] != args.steps:
            raise SystemExit(f"--resume: {args.json_path} was made with other settings "
                             f"(methods {done['methods']}, steps {done['steps']}, {first} images, chunk {args.chunk})")
        per_image, curve_x = done["per_image"], done["curve_x"]
        curve_sum = {m: {k: [v * first for v in ys] for k, ys in d.items()} for m, d in done["curves"].items()}
        correct = round(done["clean_accuracy"] * first)
        t0 -= done["wall_time_s"]
        print(f"  resuming after {first} images", file=sys.stderr, flush=True)
    lo, hi = 0, math.ceil(len(x) / args.chunk)
    if args.chunks:
        a, _, b = args.chunks.partition(":")
        lo, hi = int(a or 0), int(b) if b else hi
        if args.resume:
            raise SystemExit("--chunks and --resume do not combine; run the missing chunks as another part")
    start_image = lo * args.chunk
    for c, s in enumerate(range(0, len(x), args.chunk)):
        if s < first or not lo <= c < hi:
            continue
        xc, yc = x[s:s + args.chunk], y[s:s + args.chunk]
        r = vitlens.evaluate(model, xc, yc, methods=methods,
                             metrics=None if args.metrics is None else args.metrics.split(","),
                             steps=args.steps, batch_size=args.chunk, seed=c)
        with torch.no_grad():
            correct += int((model(xc).argmax(-1) == yc).sum())
        for m in r.methods:
            for k, v in r.per_image[m].items():
                per_image.setdefault(m, {}).setdefault(k, []).extend(v.tolist())
                cur = r.curves[m][k]
                curve_x[k] = cur.x
                prev = curve_sum.setdefault(m, {}).get(k, [0.0] * len(cur.y))
                curve_sum[m][k] = [a + b * len(xc) for a, b in zip(prev, cur.y)]
        n = s + len(xc) - start_image
        wall = time.perf_counter() - t0
        payload = {
            "model": "demo", "n_images": n, "first_image": start_image, "chunk": args.chunk,
            "per_class_requested": args.per_class, "steps": args.steps,
            "methods": methods, "metrics": r.metrics, "params": {k: v for k, v in r.to_dict()["params"].items()
                                                                if k not in ("seed", "limit")},
            "clean_accuracy": correct / n, "wall_time_s": wall, "threads": args.threads,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": " ".join(sys.argv),
            "per_image": per_image, "curve_x": curve_x,
            "curves": {m: {k: [v / n for v in ys] for k, ys in d.items()} for m, d in curve_sum.items()},
        }
        if args.json_path:
            tmp = Path(str(args.json_path) + ".tmp")
            tmp.write_text(json.dumps(payload))
            tmp.replace(args.json_path)
        print(f"  {n}/{len(x) - start_image} images, {wall:.0f} s", file=sys.stderr, flush=True)
    print(table([payload]))
    return 0


def combine(payloads: list[dict]) -> list[dict]:
    """Join the parts of each method (``--chunks`` runs) into one payload, images in order.

    Parts of one method must be contiguous from image 0 (``first_image`` of each part is
    the previous part's end); the mean curves are weighted by the parts' image counts.
    """
    groups: dict[tuple[str, ...], list[dict]] = {}
    for p in payloads:
        groups.setdefault(tuple(p["methods"]), []).append(p)
    out = []
    for methods, parts in groups.items():
        parts = sorted(parts, key=lambda p: p.get("first_image", 0))
        end = 0
        for p in parts:
            if p.get("first_image", 0) != end:
                raise SystemExit(f"parts of {','.join(methods)} are not contiguous: one starts at image "
                                 f"{p.get('first_image', 0)}, the previous ended at {end}")
            end += p["n_images"]
        if len(parts) == 1:
            out.append(parts[0])
            continue
        n = end
        joined = dict(parts[0])
        joined["n_images"] = n
        joined["first_image"] = 0
        joined["per_image"] = {m: {k: sum((p["per_image"][m][k] for p in parts), []) for k in d}
                               for m, d in parts[0]["per_image"].items()}
        joined["curves"] = {m: {k: [sum(p["curves"][m][k][j] * p["n_images"] for p in parts) / n
                                    for j in range(len(ys))] for k, ys in d.items()}
                            for m, d in parts[0]["curves"].items()}
        joined["clean_accuracy"] = sum(p["clean_accuracy"] * p["n_images"] for p in parts) / n
        joined["wall_time_s"] = sum(p["wall_time_s"] for p in parts)
        joined["date"] = max(p["date"] for p in parts)
        out.append(joined)
    return out


def wilcoxon_p(d: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value, normal approximation with tie correction (zeros dropped)."""
    d = [v for v in d if v != 0]
    n = len(d)
    if n == 0:
        return 1.0
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks = [0.0] * n
    i, ties = 0, 0.0
    while i < n:
        j = i
        while j + 1 < n and abs(d[order[j + 1]]) == abs(d[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    w = sum(r for r, v in zip(ranks, d) if v > 0)
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - ties / 48
    z = (w - mean) / math.sqrt(var) if var > 0 else 0.0
    return math.erfc(abs(z) / math.sqrt(2))


def versus(payloads: list[dict], reference: str,
           metrics: tuple[str, ...] = ("deletion", "insertion", "positive", "negative", "positive_drop",
                                       "negative_drop")) -> str:
    """Paired per-image difference method − reference on the same images: mean, 95 % CI, Wilcoxon p."""
    rows = _rows(payloads, common=False)
    if reference not in rows:
        return ""
    from vitlens.analysis.faithfulness import LOWER_IS_BETTER

    metrics = tuple(m for m in metrics if m in rows[reference])
    out = [f"| method − {reference} | " + " | ".join(f"{m} {'↓' if LOWER_IS_BETTER[m] else '↑'}" for m in metrics)
           + " |", "|---|" + "---:|" * len(metrics)]
    for method in [m for m in ALL_METHODS if m in rows and m != reference] + \
            [m for m in rows if m not in ALL_METHODS and m != reference]:
        cells = []
        for m in metrics:
            a, b = rows[method].get(m), rows[reference].get(m)
            if not a or not b:
                cells.append("")
                continue
            d = [x - y for x, y in zip(a, b)]
            mean = sum(d) / len(d)
            sem = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("nan")
            digits = 3 if m in ("deletion", "insertion") else 2
            cells.append(f"{mean:+.{digits}f} [{mean - 1.96 * sem:+.{digits}f}, {mean + 1.96 * sem:+.{digits}f}], "
                         f"p = {wilcoxon_p(d):.1g}")
        out.append(f"| {method} (n = {len(d)}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _rows(payloads: list[dict], common: bool) -> dict[str, dict[str, list[float]]]:
    """method -> metric -> per-image AUCs; every method cut to the first n images common to all when ``common``.

    The images are in class-interleaved order, so the first n of a longer run are the
    images of a shorter one (paired comparisons stay on the same images).
    """
    n = min(p["n_images"] for p in payloads) if common else None
    rows: dict[str, dict[str, list[float]]] = {}
    for p in payloads:
        rows.update({m: {k: v[:n] for k, v in d.items()} for m, d in p["per_image"].items()})
    return rows


def table(payloads: list[dict], common: bool = False) -> str:
    """Markdown table (mean ± s.e. over images) from one or more run JSONs."""
    from vitlens.analysis.faithfulness import LOWER_IS_BETTER, METRICS

    rows = _rows(payloads, common)
    metrics = [m for m in METRICS if any(m in v for v in rows.values())]
    order = [m for m in ALL_METHODS if m in rows] + [m for m in rows if m not in ALL_METHODS]
    head = "| method | images | " + " | ".join(f"{m} {'↓' if LOWER_IS_BETTER[m] else '↑'}" for m in metrics) + " |"
    out = [head, "|---|---:|" + "---:|" * len(metrics)]
    for method in order:
        cells = [str(len(next(iter(rows[method].values()))))]
        for m in metrics:
            v = rows[method].get(m)
            if not v:
                cells.append("")
                continue
            mean = sum(v) / len(v)
            sem = math.sqrt(sum((a - mean) ** 2 for a in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
            d = 3 if m in ("deletion", "insertion") else 2
            cells.append(f"{mean:.{d}f} ± {sem:.{d}f}")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def versus_random(payloads: list[dict], metrics: tuple[str, ...] = ("deletion", "positive", "positive_drop")) -> str:
    """Paired per-image difference method − random (mean ± s.e.) on the same images; negative = beats random.

    "beats" / "worse": the mean difference is more than 2 standard errors below / above 0.
    """
    rows = _rows(payloads, common=False)
    if "random" not in rows:
        return ""
    out = ["| method − random | " + " | ".join(f"{m} (lower = better)" for m in metrics) + " |",
           "|---|" + "---:|" * len(metrics)]
    for method in [m for m in ALL_METHODS if m in rows and m != "random"]:
        cells = []
        for m in metrics:
            a, b = rows[method].get(m), rows["random"].get(m)
            if not a or not b:
                cells.append("")
                continue
            d = [x - y for x, y in zip(a, b)]          # zip: the first min(n_method, n_random) images
            mean = sum(d) / len(d)
            sem = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("nan")
            digits = 3 if m in ("deletion", "insertion") else 2
            verdict = "beats" if mean < -2 * sem else ("worse" if mean > 2 * sem else "n.s.")
            cells.append(f"{mean:+.{digits}f} ± {sem:.{digits}f} ({verdict})")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def merged_result(payloads: list[dict]):
    """A FaithfulnessResult (values, mean curves, per-image AUCs) from run files, for plotting."""
    from vitlens.analysis.faithfulness import Curve, FaithfulnessResult

    values, curves, per = {}, {}, {}
    metrics: list[str] = []
    for p in payloads:
        metrics = metrics or list(p["metrics"])
        for m, d in p["per_image"].items():
            per[m] = {k: torch.tensor(v, dtype=torch.float64) for k, v in d.items()}
            values[m] = {k: float(t.mean()) for k, t in per[m].items()}
            curves[m] = {k: Curve(m, k, p["curve_x"][k], p["curves"][m][k]) for k in d}
    order = [m for m in ALL_METHODS if m in values]
    return FaithfulnessResult({m: values[m] for m in order}, {m: curves[m] for m in order},
                              {m: per[m] for m in order}, max(p["n_images"] for p in payloads), 0,
                              {"metrics": metrics})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100, help="images per class (first N by file name)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated explain methods")
    ap.add_argument("--metrics", default=None, help="comma-separated metrics (default: all that apply)")
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16 of 64 patches)")
    ap.add_argument("--chunk", type=int, default=50, help="images per evaluate call (progress is saved after each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", dest="json_path", default=None, help="write the running result here")
    ap.add_argument("--archive", default=None)
    ap.add_argument("--resume", action="store_true", help="continue the run saved in --json after its last chunk")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="print the table of these run files instead of running")
    ap.add_argument("--plot", default=None, help="with --merge: write the mean curves (.png/.pdf/.svg)")
    ap.add_argument("--title", default=None, help="with --plot: figure title")
    ap.add_argument("--chunks", default=None, metavar="A:B", help="run only chunks A..B-1 (a part of the run)")
    ap.add_argument("--versus", default=None, metavar="METHOD",
                    help="with --merge: also print the paired comparison of every method with METHOD")
    ap.add_argument("--common", action="store_true",
                    help="with --merge: cut every method to the first n images that all files have")
    args = ap.parse_args(argv)
    if args.merge:
        payloads = combine([json.loads(Path(p).read_text()) for p in args.merge])
        for p in payloads:
            print(f"{','.join(p['methods'])}: {p['n_images']} images, clean top-1 {100 * p['clean_accuracy']:.1f}%, "
                  f"wall {p['wall_time_s']:.0f} s, {p['date']}", file=sys.stderr)
        print(table(payloads, common=args.common))
        print()
        print(versus_random(payloads))
        if args.versus:
            print()
            print(versus(payloads, args.versus))
        if args.plot:
            from vitlens.export.curves import faithfulness_curves
            from vitlens.export.figures import save_figure

            save_figure(faithfulness_curves(merged_result(payloads), title=args.title), args.plot, dpi=90)
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
