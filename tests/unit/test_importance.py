"""Token importance, keep_tokens and the keep-ratio curve against hand-run ViTs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vitlens
from vitlens.analysis.importance import (
    as_batches, count_for, forward_kept, keep_ratio_curve, keep_tokens, token_importance,
)
from vitlens.data import ImageBatch
from vitlens.errors import UnsupportedModelError

from ..conftest import FAMILY_CASES, make_model


@torch.no_grad()
def hand_forward(model, img: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """One image through a timm ViT by hand: embed, prefix tokens, position embeddings, keep, blocks, head."""
    t = model.patch_embed(img[None])
    if t.dim() == 4:                                  # dynamic_img_size: NHWC
        t = t.flatten(1, 2)
    prefix = [tok for tok in (model.cls_token, getattr(model, "dist_token", None), model.reg_token)
              if tok is not None]
    P = sum(p.shape[1] for p in prefix)
    assert P == model.num_prefix_tokens
    if model.no_embed_class:                          # deit3 / dinov2: positions only on patches
        t = t + model.pos_embed
        seq = torch.cat(prefix + [t], dim=1)
    else:
        seq = torch.cat(prefix + [t], dim=1) + model.pos_embed
    seq = torch.cat([seq[:, :P], seq[:, [P + p for p in keep]]], dim=1)
    seq = model.norm_pre(seq)
    for blk in model.blocks:
        seq = blk(seq)
    seq = model.norm(seq)
    if getattr(model, "dist_token", None) is not None:   # DeiT distilled: mean of both heads at eval
        return (model.head(seq[:, 0]) + model.head_dist(seq[:, 1])) / 2
    pooled = seq[:, 0] if model.global_pool == "token" else seq[:, P:].mean(dim=1)
    return model.head(model.fc_norm(pooled))


def hand_top_k(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def test_count_for_rounds_half_up():
    assert [count_for(f, 64) for f in (0.1, 0.5, 0.9, 1.0)] == [6, 32, 58, 64]
    assert count_for(0.5, 3) == 2 and count_for(0.25, 2) == 1 and count_for(0.0, 10) == 0


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_keep_ratio_one_is_the_plain_forward_exactly(case):
    model, x = make_model(case)
    with torch.no_grad():
        plain = model(x)
    scores = torch.rand(x.shape[0], model.patch_embed.num_patches if case != "dynamic_img_size" else 15)
    assert torch.equal(keep_tokens(model, x, scores, 1.0), plain)


@pytest.mark.parametrize("case", ["vit", "deit_distilled", "dinov2_reg4", "gap_no_cls", "deit3"])
def test_keep_tokens_equals_the_model_run_on_gathered_tokens_by_hand(case):
    model, x = make_model(case)
    n = model.patch_embed.num_patches
    scores = torch.randint(0, 3, (x.shape[0], n), generator=torch.Generator().manual_seed(0)).float()  # ties
    k = count_for(0.4, n)
    got = keep_tokens(model, x, scores, 0.4)
    for b in range(x.shape[0]):
        want = hand_forward(model, x[b], hand_top_k(scores[b].tolist(), k))
        assert torch.allclose(got[b], want[0], atol=1e-5), case


def test_forward_kept_any_order_matches_hand_run():
    model, x = make_model("vit")
    keep = torch.tensor([[5, 0, 9], [15, 14, 1]])
    got = forward_kept(model, x, keep)
    for b in range(2):
        assert torch.allclose(got[b], hand_forward(model, x[b], keep[b].tolist())[0], atol=1e-5)
    with pytest.raises(ValueError, match="outside 0..15"):
        forward_kept(model, x, torch.tensor([[0, 16], [1, 2]]))


def test_keep_tokens_refuses_other_models_clearly():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(UnsupportedModelError, match="timm VisionTransformer"):
        keep_tokens(conv, torch.zeros(1, 3, 8, 8), torch.rand(1, 4), 0.5)
    model, x = make_model("vit")
    with pytest.raises(ValueError, match=r"keep_ratio must be a fraction in \(0, 1\]"):
        keep_tokens(model, x, torch.rand(2, 16), 0.0)
    with pytest.raises(ValueError, match="scores must be"):
        keep_tokens(model, x, torch.rand(3, 16), 0.5)


def test_token_importance_by_received_attention_and_by_explain():
    model, x = make_model("vit")
    got = token_importance(model, x, method="received")
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    a = cache.attention(-1).double()                      # [B, H, T, T]
    want = a.mean(dim=1).mean(dim=1)[:, 1:]               # mean over heads and query rows, patch columns
    assert got.shape == (2, 16)
    assert torch.allclose(got.double(), want, atol=1e-6)
    roll = token_importance(model, x, method="rollout")
    assert torch.equal(roll, vitlens.explain(model, x, method="rollout").reshape(2, -1))
    with pytest.raises(TypeError, match="only the option 'layer'"):
        token_importance(model, x, method="received", head=0)


def test_keep_ratio_curve_against_hand_counts_and_deterministic_random():
    model, x = make_model("vit")
    x = torch.cat([x, torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))])
    labels = torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        pred = model(x).argmax(-1)
    curve = keep_ratio_curve(model, x, labels, method="rollout", ratios=[0.25, 1.0], batch_size=2)
    assert curve.ratios == [0.25, 1.0] and curve.n_images == 5 and curve.reference == "labels"
    assert curve.accuracy["rollout"][1] == pytest.approx(100 * float((pred == labels).float().mean()))
    scores = vitlens.explain(model, x, method="rollout").reshape(5, -1)
    hits = sum(int(hand_forward(model, x[b], hand_top_k(scores[b].tolist(), 4)).argmax()) == int(labels[b])
               for b in range(5))
    assert curve.accuracy["rollout"][0] == pytest.approx(100 * hits / 5)
    again = keep_ratio_curve(model, x, labels, method="rollout", ratios=[0.25, 1.0], batch_size=2)
    assert again.accuracy == curve.accuracy
    agree = keep_ratio_curve(model, x, method="random", ratios=[1.0])
    assert agree.reference == "prediction" and agree.accuracy == {"random": [100.0]}
    with pytest.raises(ValueError, match="ratios must be fractions"):
        keep_ratio_curve(model, x, ratios=[0.0, 0.5])


def test_as_batches_accepts_tensors_pairs_and_image_batches():
    x = torch.randn(5, 3, 4, 4)
    labels = torch.arange(5)
    got = list(as_batches(x, labels, batch_size=2))
    assert [b.images.shape[0] for b in got] == [2, 2, 1]
    assert torch.equal(torch.cat([b.labels for b in got]), labels)
    ib = ImageBatch(torch.tensor([3, 4, 5]), torch.randn(3, 3, 4, 4), torch.tensor([True, False, True]),
                    ["", "not an image", ""], [])
    (b,) = list(as_batches([ib], torch.arange(10, 16)))
    assert b.skipped == 1 and b.labels.tolist() == [13, 15] and b.index.tolist() == [3, 5]
    (b,) = list(as_batches([(x[:2], [7, 8])]))
    assert b.labels.tolist() == [7, 8]
    with pytest.raises(TypeError, match="iterable of batches"):
        list(as_batches("images/"))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        list(as_batches(torch.zeros(3, 4, 4)))


def test_keep_ratio_plot_returns_a_figure():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from vitlens.export.curves import keep_ratio_plot

    model, x = make_model("vit")
    curve = keep_ratio_curve(model, x, method="rollout", ratios=[0.5, 1.0])
    fig = keep_ratio_plot(curve)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 2
    ax = Figure().add_subplot()
    assert keep_ratio_plot(curve, ax=ax) is ax.figure
