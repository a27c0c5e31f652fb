"""How close AttnLRP and CP-LRP come to conservation on the demo model (numbers for docs/methods.md).

For the first ``--per-class`` CIFAR-10 test images of each class (the images of
``scripts/faithfulness_table.py``), target = predicted class, it reports per variant the
median and 5-95 % range over images of

- ``pixels``: ``Σ R(pixels) / y_t``, the share of the target logit that reaches the image;
- ``inputs``: ``(Σ R(pixels) + R(cls_token) + R(pos_embed)) / y_t``, everything that enters
  the first block (the rest is absorbed by biases and, for AttnLRP, the softmax rule);

once for the model as it is and once for a bias-free copy (every bias set to 0), where
CP-LRP must give exactly 1 for ``inputs`` and AttnLRP shows what its softmax rule absorbs.

    python scripts/lrp_conservation.py [--per-class 20]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faithfulness_table import find_archive, load_split  # noqa: E402


def main() -> None:
    import vitlens
    from vitlens.analysis.lrp import lrp_relevance

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=20)
    args = ap.parse_args()
    model, cfg = vitlens.load_model("demo", device="cpu")
    x, _y, _ = load_split(find_archive(), args.per_class, vitlens.make_transform(cfg))
    free = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in free.named_parameters():
            if n.endswith("bias"):
                p.zero_()
    print(f"demo model, {len(x)} CIFAR-10 test images, target = predicted class")
    for label, m in (("as trained", model), ("biases set to 0", free)):
        for variant in ("attnlrp", "cp-lrp"):
            pix, inp = [], []
            for s in range(0, len(x), 50):
                xb = x[s:s + 50]
                rel, logits, tgt, _layout, _ = lrp_relevance(m, xb, variant=variant)
                yt = logits.gather(1, tgt[:, None])[:, 0].double()
                pix.append(rel.double().sum((1, 2, 3)) / yt)
                for b in range(len(xb)):   # per image: prefix token + position embedding relevance
                    _r, lg, tg, _l, ex = lrp_relevance(m, xb[b:b + 1], tgt[b:b + 1], variant=variant,
                                                       extra_inputs=[m.cls_token, m.pos_embed])
                    inp.append(((_r.double().sum() + sum(e.double().sum() for e in ex))
                                / lg[0, tg[0]].double()).reshape(1))
            for what, v in (("pixels", torch.cat(pix)), ("inputs", torch.cat(inp))):
                q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
                print(f"  {label:>16} {variant:>8} {what:>6}: median {q[1]:.4f} (5-95 %: {q[0]:.4f} .. {q[2]:.4f})")


if __name__ == "__main__":
    main()
