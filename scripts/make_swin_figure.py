"""The Swin picture in README.md and docs/swin.md, drawn by the code itself.

    python scripts/make_swin_figure.py        # writes docs/images/chelsea_swin_maps.png

swin_tiny_patch4_window7_224 with RANDOM-INIT weights (no pretrained weights can be
fetched offline): the picture shows that capture, the un-shifted dense attention, Swin
rollout through patch merging and attention received work on a real photo and land on
the right pixels, not what a trained Swin looks at. Run it with pretrained weights
cached (``--pretrained``) to draw the trained model instead.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vitlens
from vitlens.export.figures import head_grid, save_figure

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", action="store_true", help="use timm's pretrained weights (must be cached)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "chelsea_swin_maps.png")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, cfg = vitlens.load_model("swin_tiny_patch4_window7_224", pretrained=args.pretrained, device="cpu")
    img = vitlens.load_image(REPO / "examples" / "chelsea.jpg")
    pre = vitlens.preprocess(img, cfg)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(pre.tensor[None])
    first, last = 0, cache.num_layers - 1
    maps = {
        "rollout (all 12 blocks, through patch merging)": vitlens.rollout(cache)[0],
        f"received, block {first} (stage 0)": vitlens.attention_received(cache, layer=first)[0],
        f"received, block {last} (stage {cache.layout_of(last).stage})": vitlens.attention_received(cache, layer=last)[0],
    }
    weights = "pretrained" if args.pretrained else "random-init weights: geometry, not learned attention"
    grid = cache.layout.grid_size  # first stage; later stages' maps are coarser (7x7): repeat their cells
    panels = [torch.nn.functional.interpolate(m[None, None].float(), size=grid, mode="nearest")[0, 0]
              for m in maps.values()]
    fig = head_grid(torch.stack(panels), image=img,
                    box=pre.box, head_labels=list(maps), ncols=3,
                    title=f"swin_tiny_patch4_window7_224 ({weights})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
