"""The LRP figure of docs/methods.md: AttnLRP / CP-LRP maps on the bundled demo Swin and demo ViT.

    python scripts/lrp_figure.py [--out docs/images/lrp_maps.png] [--image examples/cifar10_cat.png]

Both models were trained on CIFAR-10 by ``scripts/train_demo.py`` (``demo-swin``: two stages,
shifted 4x4 windows, one patch merging; ``demo``: the ViT). Each row explains the model's
predicted class on the same real photo: AttnLRP relevance per pixel and per first-stage patch,
then CP-LRP (Swin) or ``chefer`` (ViT) per patch. Relevance is signed: red = for the class,
blue = against; each panel is scaled symmetrically to its own largest |value|. For Swin the
relevance goes through the shifted windows and the patch merging back to the input.
"""
from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import vitlens

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "lrp_maps.png"))
    ap.add_argument("--image", default=str(REPO / "examples" / "cifar10_cat.png"))
    args = ap.parse_args()
    img = vitlens.load_image(args.image)

    rows = []
    for name, title, third in (("demo-swin", "demo Swin (CIFAR-10)", ("cp-lrp", "CP-LRP")),
                               ("demo", "demo ViT (CIFAR-10)", ("chefer", "chefer"))):
        model, cfg = vitlens.load_model(name)
        pre = vitlens.preprocess(img, cfg)
        rows.append((name, title, model, pre, third))

    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.4 * len(rows)))
    for r, (name, title, model, pre, (third, third_title)) in enumerate(rows):
        x = pre.tensor[None]
        res = vitlens.explain(model, x, "attnlrp", details=True)
        t = int(res.target[0])
        p = float(res.logits.float().softmax(-1)[0, t])
        names = vitlens.class_names(model)
        gh, gw = res.maps.shape[-2:]
        axes[r, 0].imshow(img.crop(tuple(round(v) for v in pre.box)))   # what the model sees (centre crop)
        axes[r, 0].set_title(f"{title}\npredicted and explained: {names[t]} ({p:.2f})", fontsize=10)
        panels = [(vitlens.explain(model, x, "attnlrp", pixels=True)[0], "AttnLRP, pixels", True),
                  (res.maps[0], f"AttnLRP, {gh}x{gw} patches", True),
                  (vitlens.explain(model, x, third)[0], f"{third_title}, patches", third != "chefer")]
        for c, (m, label, signed) in enumerate(panels, start=1):
            m = m.detach().float()
            if signed:
                lim = float(m.abs().max()) or 1.0
                axes[r, c].imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
            else:
                axes[r, c].imshow(m, cmap="inferno")
            axes[r, c].set_title(label, fontsize=10)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout(h_pad=2.0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
