"""How close AttnLRP and CP-LRP come to conservation on the demo model (numbers for docs/methods.md).

For the first ``--per-class`` CIFAR-10 test images of each class (the images of
``scripts/faithfulness_table.py``), target = predicted class, it reports per variant the
median and 5-95 % range over images of

- ``pixels``: ``Σ R(pixels) / y_t``, the share of the target logit that reaches the image;
- ``inputs``: ``Σ R(tokens entering blocks[0]) / y_t`` (patch embeddings + CLS token +
  position embeddings: everything that enters the first block; the rest is absorbed by
  the biases of the blocks and the head and, for AttnLRP, by the softmax rule);

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


def relevances(model, x, variant):
    """Per image: ``Σ R(pixels) / y_t`` and ``Σ R(tokens entering blocks[0]) / y_t`` from one batched pass."""
    from vitlens.analysis.gradients import preserved_model_state
    from vitlens.analysis.lrp import relevance_rules

    seen = {}

    def grab(_m, args):
        seen["tokens"] = args[0]

    with preserved_model_state(model), torch.enable_grad():
        for p in model.parameters():
            p.requires_grad_(False)
        xi = x.detach().clone().requires_grad_(True)
        h = model.blocks[0].register_forward_pre_hook(grab)
        try:
            with relevance_rules(model, variant):
                logits = model(xi)
        finally:
            h.remove()
        tgt = logits.argmax(-1)
        yt = logits.gather(1, tgt[:, None])[:, 0]
        gx, gt = torch.autograd.grad(yt.sum(), [xi, seen["tokens"]])
    yt = yt.detach().double()
    return ((xi * gx).double().sum((1, 2, 3)) / yt,
            (seen["tokens"] * gt).double().sum((1, 2)) / yt)


def main() -> None:
    import vitlens

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
            pix, inp = relevances(m, x, variant)
            for what, v in (("pixels", pix), ("inputs", inp)):
                q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
                print(f"  {label:>16} {variant:>8} {what:>6}: median {q[1]:.4f} (5-95 %: {q[0]:.4f} .. {q[2]:.4f})",
                      flush=True)


if __name__ == "__main__":
    main()
