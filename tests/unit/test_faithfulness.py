"""Faithfulness metrics against slow, direct references (per-image loops, hand-built perturbations,
hand trapezoids), an oracle model that looks at one patch only, and the bad-input contract."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vitlens
from vitlens.analysis.faithfulness import (
    METRICS, baseline_image, deletion_curve, evaluate, insertion_curve, perturbation_curve, token_drop_curve,
)
from vitlens.errors import UnsupportedModelError

from ..conftest import make_model

# the tiny ViT: 64x64 input, 16-pixel patches -> a 4x4 grid, N = 16 patches
GRID, CELL, N = (4, 4), 16, 16


@pytest.fixture(scope="module")
def vit():
    model, _ = make_model("vit")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    return model, x


# ------------------------------------------------------------------ references (slow, direct)
def ref_order(scores: list[float], most_relevant_first: bool) -> list[int]:
    """Hand ranking: by score, ties to the lower patch index."""
    idx = range(len(scores))
    if most_relevant_first:
        return sorted(idx, key=lambda i: (-scores[i], i))
    return sorted(idx, key=lambda i: (scores[i], i))


def ref_replace(img: torch.Tensor, source: torch.Tensor, patches: list[int]) -> torch.Tensor:
    """Copy of ``img`` whose listed patches (row-major on the 4x4 grid) come from ``source``."""
    out = img.clone()
    for p in patches:
        r, c = divmod(p, GRID[1])
        out[:, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = source[:, r * CELL:(r + 1) * CELL,
                                                                         c * CELL:(c + 1) * CELL]
    return out


def ref_trapz(xs: list[float], ys: list[float]) -> float:
    total = 0.0
    for i in range(len(xs) - 1):
        total += (xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2
    return total


@torch.no_grad()
def ref_prob(model, img, cls) -> float:
    return float(torch.softmax(model(img[None]).double(), -1)[0, cls])


@torch.no_grad()
def ref_correct(model, img, label) -> float:
    return 100.0 if int(model(img[None]).argmax(-1)) == label else 0.0


# the perturbation tests' counts for N = 16 at 0, 10, ..., 90 %: floor(f * 16 + 0.5), written out by hand
PERT_COUNTS = [0, 2, 3, 5, 6, 8, 10, 11, 13, 14]
PERT_X = [i / 10 for i in range(10)]


def ref_deletion(model, x, maps, target, base, counts, insert=False):
    out = []
    for b in range(x.shape[0]):
        order = ref_order(maps[b].flatten().tolist(), True)
        ys = []
        for k in counts:
            if insert:
                img = ref_replace(base[b], x[b], order[:k])
            else:
                img = ref_replace(x[b], base[b], order[:k])
            ys.append(ref_prob(model, img, int(target[b])))
        out.append(ref_trapz([k / N for k in counts], ys))
    return out


def ref_perturbation(model, x, maps, labels, base, positive):
    out = []
    for b in range(x.shape[0]):
        order = ref_order(maps[b].flatten().tolist(), positive)
        ys = [ref_correct(model, ref_replace(x[b], base[b], order[:k]), int(labels[b])) for k in PERT_COUNTS]
        out.append(ref_trapz(PERT_X, ys))
    return out


@torch.no_grad()
def ref_vit_on_tokens(model, img, keep: list[int]) -> torch.Tensor:
    """The demo-style timm ViT (CLS token, pos_embed over CLS and patches, token pooling) run by hand."""
    t = model.patch_embed(img[None])                               # [1, N, D]
    seq = torch.cat([model.cls_token, t], dim=1) + model.pos_embed  # position embeddings first
    seq = torch.cat([seq[:, :1], seq[:, [1 + p for p in keep]]], dim=1)
    for blk in model.blocks:
        seq = blk(seq)
    seq = model.norm(seq)
    return model.head(model.fc_norm(seq[:, 0]))


def ref_token_drop(model, x, maps, labels, positive):
    out = []
    for b in range(x.shape[0]):
        order = ref_order(maps[b].flatten().tolist(), positive)
        ys = []
        for k in PERT_COUNTS:
            keep = sorted(order[k:])
            ys.append(100.0 if int(ref_vit_on_tokens(model, x[b], keep).argmax(-1)) == int(labels[b]) else 0.0)
        out.append(ref_trapz(PERT_X, ys))
    return out


def tie_maps(batch: int, seed: int) -> torch.Tensor:
    """Maps with many ties (values 0..3) so the tie-breaking rule matters."""
    return torch.randint(0, 4, (batch, *GRID), generator=torch.Generator().manual_seed(seed)).float()


# ------------------------------------------------------------------ each metric vs its reference
def test_deletion_matches_reference_one_patch_per_step(vit):
    model, x = vit
    maps = tie_maps(3, 0)
    target = torch.tensor([1, 4, 7])
    cb = deletion_curve(model, x, maps, target, baseline="zero")
    assert cb.x.tolist() == pytest.approx([k / N for k in range(N + 1)])
    got = (cb.x[1:] - cb.x[:-1]).mul(cb.y[:, 1:].double() + cb.y[:, :-1].double()).div(2).sum(-1)
    want = ref_deletion(model, x, maps, target, torch.zeros_like(x), list(range(N + 1)))
    assert got.tolist() == pytest.approx(want, abs=1e-5)


def test_deletion_and_insertion_with_coarse_steps_match_reference(vit):
    model, x = vit
    maps = tie_maps(3, 1)
    target = torch.tensor([0, 2, 9])
    counts = [0, 3, 6, 10, 13, 16]             # floor(j * 16 / 5 + 0.5), j = 0..5, by hand
    mean_base = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    r = evaluate_curve_auc(deletion_curve(model, x, maps, target, baseline="mean", steps=5))
    assert r == pytest.approx(ref_deletion(model, x, maps, target, mean_base, counts), abs=1e-5)
    r = evaluate_curve_auc(insertion_curve(model, x, maps, target, baseline="zero", steps=5))
    assert r == pytest.approx(ref_deletion(model, x, maps, target, torch.zeros_like(x), counts, insert=True),
                              abs=1e-5)


def evaluate_curve_auc(cb) -> list[float]:
    xs = cb.x.tolist()
    return [ref_trapz(xs, row) for row in cb.y.double().tolist()]


def test_blur_baseline_is_torchvision_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for sigma in (1.0, 2.5, 8.0):
        radius = math.ceil(3 * sigma)
        want = gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
        assert torch.allclose(baseline_image(x, "blur", blur_sigma=sigma), want, atol=1e-5)
    # default sigma: half the patch size
    want = gaussian_blur(x, kernel_size=[25, 25], sigma=[4.0, 4.0])
    assert torch.allclose(baseline_image(x, "blur", cell=(8, 8)), want, atol=1e-5)


def test_insertion_with_blur_matches_reference(vit):
    from torchvision.transforms.functional import gaussian_blur

    model, x = vit
    maps = tie_maps(3, 2)
    target = torch.tensor([3, 3, 5])
    # default sigma: half the 16-pixel patch = 8, radius ceil(3 * 8) = 24 (capped below the 64-pixel side)
    blurred = gaussian_blur(x, kernel_size=[49, 49], sigma=[8.0, 8.0])
    got = evaluate_curve_auc(insertion_curve(model, x, maps, target, steps=4))
    assert got == pytest.approx(ref_deletion(model, x, maps, target, blurred, [0, 4, 8, 12, 16], insert=True),
                                abs=1e-4)


@pytest.mark.parametrize("positive", [True, False])
def test_perturbation_test_matches_reference(vit, positive):
    model, x = vit
    maps = tie_maps(3, 4)
    with torch.no_grad():
        labels = model(x).argmax(-1)
    labels[0] = (labels[0] + 1) % 10            # one image "wrong" from the start
    cb = perturbation_curve(model, x, maps, labels, positive=positive)
    assert cb.x.tolist() == pytest.approx(PERT_X)
    assert evaluate_curve_auc(cb) == pytest.approx(
        ref_perturbation(model, x, maps, labels, torch.zeros_like(x), positive), abs=1e-6)


@pytest.mark.parametrize("positive", [True, False])
def test_token_drop_matches_running_the_model_on_gathered_tokens(vit, positive):
    model, x = vit
    maps = tie_maps(3, 5)
    with torch.no_grad():
        labels = model(x).argmax(-1)
    cb = token_drop_curve(model, x, maps, labels, positive=positive)
    assert evaluate_curve_auc(cb) == pytest.approx(ref_token_drop(model, x, maps, labels, positive), abs=1e-6)


def test_evaluate_matches_references_over_batches(vit):
    """evaluate (two batches: 2 + 1 images) equals the per-image references, and curve AUC = value."""
    model, x = vit
    labels = torch.tensor([1, 2, 3])
    res = evaluate(model, x, labels, methods=["rollout", "cls"], metrics=list(METRICS), steps=4, batch_size=2,
                   baseline="zero")
    assert res.n_images == 3 and set(res) == {"rollout", "cls"} and len(res) == 2
    with torch.no_grad():
        pred = model(x).argmax(-1)
    zero = torch.zeros_like(x)
    for method in ("rollout", "cls"):
        maps = vitlens.explain(model, x, method=method)
        per = res.per_image[method]
        assert per["deletion"].tolist() == pytest.approx(
            ref_deletion(model, x, maps, pred, zero, [0, 4, 8, 12, 16]), abs=1e-5)
        assert per["insertion"].tolist() == pytest.approx(
            ref_deletion(model, x, maps, pred, zero, [0, 4, 8, 12, 16], insert=True), abs=1e-5)
        assert per["positive"].tolist() == pytest.approx(ref_perturbation(model, x, maps, labels, zero, True))
        assert per["negative"].tolist() == pytest.approx(ref_perturbation(model, x, maps, labels, zero, False))
        assert per["positive_drop"].tolist() == pytest.approx(ref_token_drop(model, x, maps, labels, True))
        assert per["negative_drop"].tolist() == pytest.approx(ref_token_drop(model, x, maps, labels, False))
        for metric in METRICS:
            assert res[method][metric] == pytest.approx(sum(per[metric].tolist()) / 3)
            assert res.curves[method][metric].auc == pytest.approx(res[method][metric], abs=1e-9)


def test_evaluate_takes_an_iterable_of_batches_with_labels(vit):
    model, x = vit
    labels = torch.tensor([1, 2, 3])
    whole = evaluate(model, x, labels, methods="rollout", metrics=["positive", "deletion"], steps=2)
    parts = evaluate(model, [(x[:1], labels[:1]), (x[1:], labels[1:])], methods="rollout",
                     metrics=["positive", "deletion"], steps=2)
    for m in ("positive", "deletion"):
        assert parts.per_image["rollout"][m].tolist() == pytest.approx(whole.per_image["rollout"][m].tolist())
    assert parts.params["reference"] == "labels"
    limited = evaluate(model, x, labels, methods="rollout", metrics=["positive"], limit=2, batch_size=2)
    assert limited.n_images == 2


def test_random_baseline_is_deterministic(vit):
    model, x = vit
    kw = dict(methods=["random"], metrics=["deletion", "positive"], steps=4, batch_size=2)
    a = evaluate(model, x, **kw)
    b = evaluate(model, x, **kw)
    c = evaluate(model, x, seed=1, **kw)
    for m in ("deletion", "positive"):
        assert torch.equal(a.per_image["random"][m], b.per_image["random"][m])
    assert not torch.equal(a.per_image["random"]["deletion"], c.per_image["random"]["deletion"])


# ------------------------------------------------------------------ oracle: a model that sees one patch
KEY = 6   # patch (row 1, col 2) of the 4x4 grid


class OnePatchModel(nn.Module):
    """Logits [4 s, 2] with s the mean of patch KEY: class 0 while the patch is bright, 1 once it is removed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = divmod(KEY, GRID[1])
        s = x[:, :, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL].mean(dim=(1, 2, 3))
        return torch.stack([4 * s, torch.full_like(s, 2.0)], dim=1)


def test_oracle_map_scores_best_and_reversed_worst():
    model = OnePatchModel()
    x = 1.0 + 0.1 * torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4, dtype=torch.long)
    oracle = torch.zeros(4, *GRID)
    oracle.view(4, -1)[:, KEY] = 1.0
    reversed_ = -oracle
    rnd = torch.rand(4, *GRID, generator=torch.Generator().manual_seed(1))
    rnd.view(4, -1)[:, KEY] = 0.5                     # somewhere in the middle

    def auc(fn, maps, **kw):
        cb = fn(model, x, maps, labels, **kw)
        return sum(evaluate_curve_auc(cb)) / 4

    for fn, kw, lower in ((deletion_curve, dict(baseline="zero"), True),
                          (insertion_curve, dict(baseline="zero"), False),
                          (perturbation_curve, dict(positive=True), True),
                          (perturbation_curve, dict(positive=False), False)):
        o, r, v = auc(fn, oracle, **kw), auc(fn, rnd, **kw), auc(fn, reversed_, **kw)
        if lower:
            assert o < r < v, (fn.__name__, kw, o, r, v)
        else:
            assert o > r > v, (fn.__name__, kw, o, r, v)
    # exact values: deletion with the oracle drops to p = sigmoid(-2) after one of 16 patches
    cb = deletion_curve(model, x, oracle, labels, baseline="zero")
    assert cb.y[:, 1:].max() < 0.13 and cb.y[:, 0].min() > 0.8
    cb = perturbation_curve(model, x, oracle, labels, positive=True)
    assert cb.y[:, 0].tolist() == [100.0] * 4 and cb.y[:, 1:].max() == 0     # gone once 2 patches are removed


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise_clear_errors(vit):
    model, x = vit
    with pytest.raises(ValueError, match="did you mean 'deletion'"):
        evaluate(model, x, methods="rollout", metrics=["deletoin"])
    with pytest.raises(ValueError, match="baseline must be one of blur, mean, zero"):
        evaluate(model, x, methods="rollout", metrics=["deletion"], baseline="black")
    with pytest.raises(ValueError, match="steps must be between 1 and the number of patches"):
        evaluate(model, x, methods="rollout", metrics=["deletion"], steps=17)
    with pytest.raises(ValueError, match="got 2 labels for 3 images"):
        evaluate(model, x, torch.tensor([0, 1]), methods="rollout", metrics=["positive"])
    with pytest.raises(ValueError, match="`target_source=label` needs labels"):
        evaluate(model, x, methods="rollout", metrics=["deletion"], target_source="label")
    with pytest.raises(ValueError, match="unknown explanation method"):
        evaluate(model, x, methods=["rolout"], metrics=["deletion"])
    with pytest.raises(ValueError, match="NaN"):
        deletion_curve(model, x, torch.full((3, *GRID), float("nan")), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="does not divide"):
        deletion_curve(model, x, torch.rand(3, 5, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(UnsupportedModelError, match="VisionTransformer"):
        token_drop_curve(OnePatchModel(), x, torch.rand(3, *GRID), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------ plots
def test_curve_plots_return_figures(vit):
    pytest.importorskip("matplotlib")
    from vitlens.export.curves import faithfulness_curves

    model, x = vit
    res = evaluate(model, x[:2], methods=["rollout", "random"], metrics=["deletion", "positive_drop"], steps=2)
    fig = faithfulness_curves(res)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    assert faithfulness_curves(res, "deletion", ax=ax) is ax.figure
    assert len(ax.lines) == 2
    with pytest.raises(ValueError, match="ax= draws one metric"):
        faithfulness_curves(res, ax=ax)
    with pytest.raises(ValueError, match="not in this result"):
        faithfulness_curves(res, "insertion")


# ------------------------------------------------------------------ maps of any origin
def test_evaluate_scores_precomputed_maps_and_callables_like_named_methods(vit):
    """A tensor of maps (one per input image) or a callable gives exactly the AUCs of the same maps by name;
    the oracle model ranks a foreign map that knows its patch first."""
    model, x = vit
    labels = torch.tensor([1, 2, 3])
    kw = dict(metrics=["deletion", "positive", "positive_drop"], steps=4, batch_size=2)
    named = evaluate(model, x, labels, methods=["rollout"], **kw)
    maps = vitlens.explain(model, x, method="rollout")
    calls = []

    def fn(m, images, target):
        calls.append((images.shape[0], target.tolist()))
        return vitlens.explain(m, images, method="rollout")

    res = evaluate(model, x, labels, methods={"mine": maps, "fn": fn, "roll": "rollout"}, **kw)
    assert list(res) == ["mine", "fn", "roll"]
    for name in ("mine", "fn", "roll"):
        for metric in kw["metrics"]:
            assert res.per_image[name][metric].tolist() == pytest.approx(
                named.per_image["rollout"][metric].tolist(), abs=1e-12)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    assert [c[0] for c in calls] == [2, 1] and sum((c[1] for c in calls), []) == pred.tolist()
    # input order with skipped items: row i of the tensor belongs to input i
    flipped = evaluate(model, [(x[2:], labels[2:]), (x[:2], labels[:2])], methods={"m": maps}, metrics=["positive"])
    by_name = evaluate(model, [(x[2:], labels[2:]), (x[:2], labels[:2])], methods="rollout", metrics=["positive"])
    assert flipped.per_image["m"]["positive"].tolist() != [] and \
        flipped.per_image["m"]["positive"].tolist() == pytest.approx(
            evaluate(model, x, labels, methods={"m": maps}, metrics=["positive"]).per_image["m"]["positive"].tolist())
    del by_name
    with pytest.raises(ValueError, match=r"\[N, gh, gw\]"):
        evaluate(model, x, methods={"bad": maps[0]}, metrics=["deletion"])
    with pytest.raises(ValueError, match="holds? 2 maps"):
        evaluate(model, x, methods={"short": maps[:2]}, metrics=["deletion"])
    with pytest.raises(TypeError, match="callable"):
        evaluate(model, x, methods={"bad": 3}, metrics=["deletion"])
    with pytest.raises(ValueError, match="unknown explanation method"):
        evaluate(model, x, methods={"x": "rolout"}, metrics=["deletion"])


def test_oracle_scores_a_foreign_map_first():
    model = OnePatchModel()
    x = 1.0 + 0.1 * torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(4, dtype=torch.long)
    oracle = torch.zeros(4, *GRID)
    oracle.view(4, -1)[:, KEY] = 1.0
    res = evaluate(model, x, labels, methods={"oracle": oracle, "anti": -oracle,
                                               "coarse": lambda m, im, t: oracle[: im.shape[0]].repeat_interleave(2, 1)
                                               .repeat_interleave(2, 2)},
                   metrics=["deletion", "positive"])
    assert res["oracle"]["deletion"] < res["anti"]["deletion"]
    assert res["coarse"]["deletion"] == pytest.approx(res["oracle"]["deletion"], abs=0.05)
