"""Regenerate the pictures in README.md and docs/ from the code itself.

    python scripts/make_readme_images.py            # writes docs/images/*.png

Uses the bundled demo model on examples/chelsea.jpg (a cat: a CIFAR-10 class).
"""
from __future__ import annotations

from pathlib import Path

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
    with vitlens.capture(model) as cache:
        logits = model(pre.tensor[None])
    pred = names[int(logits.argmax())]
    per_head = vitlens.cls_attention(cache, layer=-1, head=None)[0]
    fig = head_grid(per_head, image=img, box=pre.box, fused=per_head.mean(0),
                    title=f"demo ViT, CLS attention, last layer (prediction: {pred})")
    save_figure(fig, OUT / "chelsea_demo_heads.png", dpi=110)
    save_png(OUT / "chelsea_demo_cls.png", overlay(img, vitlens.cls_attention(cache)[0], box=pre.box))
    save_png(OUT / "chelsea_demo_rollout.png", overlay(img, vitlens.rollout(cache)[0], box=pre.box))
    print(f"prediction {pred}; wrote {sorted(p.name for p in OUT.glob('chelsea_demo_*'))}")


if __name__ == "__main__":
    main()
