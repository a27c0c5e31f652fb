"""Regenerate every picture in README.md and docs/ from the code itself.

    python scripts/make_readme_images.py            # writes docs/images/*.png

Uses the bundled demo model (offline): examples/chelsea.jpg (a cat: a CIFAR-10 class) for
the overlays and head grids, and 200 CIFAR-10 test images (20 per class, from the shared
data folder, see tests/conftest.py ``shared_data``; falls back to examples/*.jpg) for the
mean-attention-distance plot. Pictures:

- ``chelsea_demo_heads.png``  every head of the last layer + their mean (README, docs/index.md)
- ``chelsea_demo_cls.png``, ``chelsea_demo_rollout.png``  ``vitlens attend`` overlays (docs/quickstart.md)
- ``chelsea_demo_maps.png``  the maps compared in docs/howto/choose-a-map.md (same code as there)
- ``demo_distance_vs_depth.png``  mean attention distance per head against depth (docs/howto/head-statistics.md)
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import torch

import vitlens
from vitlens.analysis.distance import patch_distance_matrix
from vitlens.export.figures import distance_vs_depth, head_grid, save_figure
from vitlens.export.overlay import overlay, save_png

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"


def shared_data(*parts: str) -> Path | None:
    """A path under the project's shared data (same lookup as tests/conftest.py), or None."""
    roots = [Path(os.environ["VITLENS_SHARED_DATA"])] if os.environ.get("VITLENS_SHARED_DATA") else []
    roots += [parent / "shared" / "data" for parent in REPO.parents] + [Path("/work/shared/data")]
    return next((r.joinpath(*parts) for r in roots if r.joinpath(*parts).exists()), None)


def cifar_test_images(per_class: int = 20) -> list:
    """The first ``per_class`` CIFAR-10 test images of every class (PIL), or [] without the archive."""
    from PIL import Image

    archive = shared_data("cifar10", "cifar10-jpg.tar.gz")
    if archive is None:
        return []
    images: dict[str, list] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and parts[0] == "test" and m.name.endswith(".jpg"):
                bucket = images.setdefault(parts[1], [])
                if len(bucket) < per_class:
                    bucket.append(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
            elif parts[0] == "train":
                break
    return [im for bucket in images.values() for im in bucket]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model, cfg = vitlens.load_model("demo", device="cpu")
    names = vitlens.class_names(model)
    img = vitlens.load_image(REPO / "examples" / "chelsea.jpg")
    pre = vitlens.preprocess(img, cfg)
    x = pre.tensor[None]
    with vitlens.capture(model) as cache:
        logits = model(x)
    pred = names[int(logits.argmax())]
    per_head = vitlens.cls_attention(cache, layer=-1, head=None)[0]
    fig = head_grid(per_head, image=img, box=pre.box, fused=per_head.mean(0),
                    title=f"demo ViT, CLS attention, last layer (prediction: {pred})")
    save_figure(fig, OUT / "chelsea_demo_heads.png", dpi=110)
    save_png(OUT / "chelsea_demo_cls.png", overlay(img, vitlens.cls_attention(cache)[0], box=pre.box))
    save_png(OUT / "chelsea_demo_rollout.png", overlay(img, vitlens.rollout(cache)[0], box=pre.box))

    # docs/howto/choose-a-map.md: the same maps, in the same order, as the page's code
    maps = {
        "CLS, layer 0": vitlens.cls_attention(cache, layer=0)[0],
        "CLS, last layer": vitlens.cls_attention(cache, layer=-1)[0],
        "CLS, last, max over heads": vitlens.cls_attention(cache, layer=-1, head="max")[0],
        "rollout": vitlens.rollout(cache)[0],
        "rollout, discard 0.9": vitlens.rollout(cache, discard_ratio=0.9)[0],
        "received, last layer": vitlens.attention_received(cache, layer=-1)[0],
        "random baseline": vitlens.explain(model, x, method="random")[0],
    }
    fig = head_grid(torch.stack(list(maps.values())), image=img, box=pre.box, head_labels=list(maps), ncols=4)
    save_figure(fig, OUT / "chelsea_demo_maps.png", dpi=100)

    # docs/howto/head-statistics.md: mean attention distance against depth
    images = cifar_test_images()
    source = f"{len(images)} CIFAR-10 test images"
    if not images:
        images = [vitlens.load_image(p) for p in sorted((REPO / "examples").glob("*.jpg"))]
        source = f"{len(images)} example photos"
    batch = torch.stack([vitlens.preprocess(im, cfg).tensor for im in images])
    stats = vitlens.head_statistics(model, batch, statistics=("distance",), batch_size=50)["distance"]
    fig = distance_vs_depth(stats, title=f"demo ViT, {source}")
    uniform = float(patch_distance_matrix((8, 8), (4, 4)).mean())   # the demo's grid and patch
    fig.axes[0].axhline(uniform, ls="--", c="gray", lw=1)
    fig.axes[0].annotate("uniform attention", (0, uniform), xytext=(0, 3), textcoords="offset points",
                         color="gray", fontsize=8)
    save_figure(fig, OUT / "demo_distance_vs_depth.png", dpi=110)

    print(f"prediction {pred}; distance from {source}; wrote {sorted(p.name for p in OUT.glob('*.png'))}")


if __name__ == "__main__":
    main()
