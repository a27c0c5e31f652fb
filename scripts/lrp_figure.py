"""The LRP figure of docs/methods.md: AttnLRP / CP-LRP maps on Swin-T and on the demo model, real photos.

    python scripts/lrp_figure.py [--out docs/images/lrp_maps.png]

Row 1: ``swin_tiny_patch4_window7_224`` with *random* weights (seed 0; no pretrained
weights can be downloaded here) on ``examples/chelsea.jpg``: the relevance goes through
shifted windows and patch merging; with random weights it follows image structure,
not a class. Row 2: the bundled demo ViT (CIFAR-10) on the same photo, its predicted
class explained. Relevance is signed: red = for the class, blue = against; each panel
is scaled symmetrically to its own largest |value|.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import timm
    from timm.data import create_transform, resolve_data_config

    import vitlens

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "lrp_maps.png"))
    ap.add_argument("--image", default=str(REPO / "examples" / "chelsea.jpg"))
    args = ap.parse_args()
    img = vitlens.load_image(args.image)

    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    tf = create_transform(**resolve_data_config({}, model=swin))
    xs = tf(img)[None]
    demo, cfg = vitlens.load_model("demo")
    xd = vitlens.preprocess(img, cfg).tensor[None]
    names = vitlens.class_names(demo)

    rows = [
        ("Swin-T, random weights", swin, xs, [("attnlrp", {"pixels": True}, "AttnLRP, pixels"),
                                              ("attnlrp", {}, "AttnLRP, 56x56 patches"),
                                              ("cp-lrp", {}, "CP-LRP, patches")]),
        ("demo ViT (CIFAR-10)", demo, xd, [("attnlrp", {"pixels": True}, "AttnLRP, pixels"),
                                           ("attnlrp", {}, "AttnLRP, 8x8 patches"),
                                           ("chefer", {}, "chefer, patches")]),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    for r, (title, model, x, cases) in enumerate(rows):
        res = vitlens.explain(model, x, "attnlrp", details=True)
        t = int(res.target[0])
        label = names[t] if model is demo and names else f"class {t}"
        axes[r, 0].imshow(img.resize((224, 224)))
        axes[r, 0].set_title(f"{title}\nexplains: {label}", fontsize=10)
        for c, (method, opts, name) in enumerate(cases, start=1):
            m = vitlens.explain(model, x, method, **opts)[0]
            if method == "chefer":
                axes[r, c].imshow(m, cmap="inferno")
            else:
                lim = float(m.abs().max()) or 1.0
                axes[r, c].imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
            axes[r, c].set_title(name, fontsize=10)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
