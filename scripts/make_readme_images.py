"""Regenerate every picture in README.md and docs/ from the code itself.

    python scripts/make_readme_images.py            # writes docs/images/*.png

Uses the bundled demo model (offline) on examples/chelsea.jpg (a cat: a CIFAR-10 class).
Pictures:

- ``chelsea_demo_heads.png``  every head of the last layer + their mean (README, docs/index.md)
- ``chelsea_demo_cls.png``, ``chelsea_demo_rollout.png``  ``vitlens attend`` overlays (docs/quickstart.md)
- ``chelsea_demo_maps.png``  the maps compared in docs/howto/choose-a-map.md (same code as there)
- ``demo_attention_distance.png``  mean attention distance and entropy per head against depth
  (docs/heads.md, docs/howto/head-statistics.md), by ``scripts/make_distance_figure.py``
  on 1000 CIFAR-10 test images from the shared data
- ``chelsea_swin_maps.png``  Swin rollout and attention received, random-init Swin-T
  (README, docs/swin.md, docs/howto/swin.md), by ``scripts/make_swin_figure.py``
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import vitlens
from vitlens.export.figures import head_grid, save_figure
from vitlens.export.overlay import overlay, save_png

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"


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

    # docs/heads.md and docs/howto/head-statistics.md: mean attention distance and entropy
    # against depth, drawn by its own script (1000 CIFAR-10 test images)
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_distance_figure.py")], check=True)
    # README.md, docs/swin.md and docs/howto/swin.md: Swin rollout and attention received
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_swin_figure.py")], check=True)

    print(f"prediction {pred}; wrote {sorted(p.name for p in OUT.glob('*.png'))}")


if __name__ == "__main__":
    main()
