"""Regenerate docs/images/demo_attention_distance.png (docs/heads.md) from the code itself.

    python scripts/make_distance_figure.py [--images 1000]

The bundled demo ViT on the first N images of the CIFAR-10 test split (every class, in
archive order) from the shared data (``cifar10/cifar10-jpg.tar.gz``; $VITLENS_SHARED_DATA,
a ``shared/data`` beside the repository, or /work/shared/data). Prints the per-layer
numbers quoted in docs/heads.md.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import tarfile
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

import vitlens
from vitlens.export.figures import distance_vs_depth, save_figure

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images" / "demo_attention_distance.png"


def find_archive() -> Path:
    roots = [Path(os.environ["VITLENS_SHARED_DATA"])] if os.environ.get("VITLENS_SHARED_DATA") else []
    roots += [p / "shared" / "data" for p in REPO.parents] + [Path("/work/shared/data")]
    for root in roots:
        if (root / "cifar10" / "cifar10-jpg.tar.gz").exists():
            return root / "cifar10" / "cifar10-jpg.tar.gz"
    raise SystemExit("CIFAR-10 archive not found: set VITLENS_SHARED_DATA to the shared/data folder")


def test_images(archive: Path, n: int, transform, batch: int = 250) -> Iterator[torch.Tensor]:
    xs: list[torch.Tensor] = []
    seen = 0
    with tarfile.open(archive) as tar:
        for m in tar:
            if seen >= n:
                break
            if m.isfile() and "test" in Path(m.name).parts and m.name.endswith(".jpg"):
                xs.append(transform(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
                seen += 1
                if len(xs) == batch:
                    yield torch.stack(xs)
                    xs = []
    if xs:
        yield torch.stack(xs)


def uniform_distance(grid: tuple[int, int], patch: tuple[int, int]) -> float:
    """Mean distance of uniform attention: the mean over all pairs of patch centres."""
    (gh, gw), (ph, pw) = grid, patch
    cells = [(r, c) for r in range(gh) for c in range(gw)]
    return sum(math.hypot((a - c) * ph, (b - d) * pw) for a, b in cells for c, d in cells) / len(cells) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, cfg = vitlens.load_model("demo", device="cpu")
    stats = vitlens.head_statistics(model, test_images(find_archive(), args.images, vitlens.make_transform(cfg)))
    dist, ent = stats["distance"], stats["entropy"]
    grid, patch = tuple(dist.params["grid_size"]), tuple(dist.params["patch_size"])
    uniform = uniform_distance(grid, patch)

    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2), layout="tight")
    ax_d, ax_e = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    distance_vs_depth(dist, ax=ax_d, title=f"demo ViT, {dist.images} CIFAR-10 test images")
    ax_d.axhline(uniform, color="grey", linestyle="--", linewidth=0.8)
    ax_d.text(0, uniform, " uniform attention", va="bottom", fontsize=7, color="grey")
    distance_vs_depth(ent, ax=ax_e, legend=False, title="attention entropy")
    n_patches = grid[0] * grid[1]
    ax_e.axhline(math.log(n_patches), color="grey", linestyle="--", linewidth=0.8)
    ax_e.text(0, math.log(n_patches), f" uniform: ln {n_patches}", va="bottom", fontsize=7, color="grey")
    ax_e.set_ylim(top=1.15 * math.log(n_patches))
    save_figure(fig, OUT, dpi=100)

    dm, ds = dist.layer_summary()
    em, es = ent.layer_summary()
    print(f"{dist.images} images, grid {grid}, patch {patch}; uniform attention: {uniform:.2f} px, "
          f"ln N = {math.log(n_patches):.3f}")
    for i, layer in enumerate(dist.layers):
        heads = ", ".join(f"{v:.1f}" for v in dist.mean[i].tolist())
        print(f"layer {layer}: distance {dm[i]:.2f} ± {ds[i]:.2f} px (heads {heads}); "
              f"entropy {em[i]:.3f} ± {es[i]:.3f}")
    print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
