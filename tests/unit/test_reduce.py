"""Reduce on record (issue #17): capture(reduce=...) gives the analyses' full-cache results and
holds only the reductions between layers (counted as live tensor storage after every layer)."""
from __future__ import annotations

import gc
import warnings

import pytest
import torch

import vitlens
from vitlens.analysis.reductions import ClsRows, HeadStatistic, Rollout, held_bytes_estimate
from ..conftest import FAMILY_CASES, make_model
from ..integration.test_swin import make_swin

SWIN_CASES = ("swin_small", "swin_pad", "swinv2_pad")


def _model(case: str):
    if case in SWIN_CASES:
        return make_swin(case)
    return make_model(case)


def _captures(model, x, reduce, **kw):
    """A plain capture and a reduced one, each over two forwards (two batches appended)."""
    with torch.no_grad(), vitlens.capture(model) as full:
        model(x)
        model(x[:1])
    with torch.no_grad(), vitlens.capture(model, reduce=reduce, **kw) as reduced:
        model(x)
        model(x[:1])
    return full, reduced


def _same(a, b):
    assert a.shape == b.shape
    assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))


@pytest.mark.parametrize("case", [*FAMILY_CASES, *SWIN_CASES])
def test_reduced_equals_full_cache_for_every_analysis(case):
    model, x = _model(case)
    names = ["rollout", "distance", "entropy"]
    with torch.no_grad(), vitlens.capture(model, layers=[0]) as probe:
        model(x[:1])
    has_cls = probe.layout.has_cls and not probe.windowed
    if has_cls:
        names.append("cls")
    full, reduced = _captures(model, x, names)
    assert reduced._store == {}                       # nothing kept in full
    with pytest.raises(ValueError, match="recorded into reductions only"):
        reduced.attention(0)
    roll_full, roll_red = vitlens.rollout(full), vitlens.rollout(reduced)
    assert roll_red.shape == roll_full.shape == (3, *full.layout.grid_size)
    torch.testing.assert_close(roll_red, roll_full, atol=1e-6, rtol=0)
    _same(vitlens.mean_attention_distance(reduced), vitlens.mean_attention_distance(full))
    _same(vitlens.attention_entropy(reduced), vitlens.attention_entropy(full))
    _same(vitlens.mean_attention_distance(reduced, layers=[-1, 0]), vitlens.mean_attention_distance(full, [-1, 0]))
    if has_cls:
        for layer in range(full.num_layers):
            _same(vitlens.cls_attention(reduced, layer, head=None), vitlens.cls_attention(full, layer, head=None))
        for head in ("mean", "max", 1):
            _same(vitlens.cls_attention(reduced, -1, head=head, renormalize=True),
                  vitlens.cls_attention(full, -1, head=head, renormalize=True))


@pytest.mark.parametrize("case", ["vit", "gap_no_cls", "dinov2_reg4", "swin_pad"])
@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.3), ("min", 0.5)])
def test_rollout_options_match_full_cache(case, fusion, discard):
    model, x = _model(case)
    full, reduced = _captures(model, x, [Rollout(fusion, discard)])
    torch.testing.assert_close(vitlens.rollout(reduced, fusion, discard), vitlens.rollout(full, fusion, discard),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="recorded into reductions only"):   # other parameters: not reduced
        vitlens.rollout(reduced, "mean" if fusion != "mean" else "max")


@pytest.mark.parametrize("prefix", [0, 1, 3])
def test_forward_order_rollout_matches_matrix_product_reference(prefix):
    """Independent reference: R = Â_L ··· Â_1 formed per image with explicit matrices."""
    g = torch.Generator().manual_seed(3)
    L, B, H, gh, gw = 4, 2, 3, 3, 4
    T = prefix + gh * gw
    attn = [torch.softmax(3 * torch.randn(B, H, T, T, generator=g), -1) for _ in range(L)]
    names = ("cls", "reg", "reg")[:prefix]
    layout = vitlens.TokenLayout(prefix, names, (gh, gw), (8, 8), (8 * gh, 8 * gw))
    cache = vitlens.AttentionCache.from_tensors(attn, layout)
    red = Rollout()
    for layer, a in enumerate(attn):            # what capture does, layer by layer
        red.update(layer, a, cache)
    ref = []
    for b in range(B):
        R = torch.eye(T, dtype=torch.float64)
        for a in attn:
            A = a[b].double().mean(0)
            Ahat = 0.5 * A + 0.5 * torch.eye(T, dtype=torch.float64)
            R = (Ahat / Ahat.sum(-1, keepdim=True)) @ R
        m = R[0, prefix:] if prefix else R[prefix:, prefix:].mean(0)
        ref.append((m / m.sum()).reshape(gh, gw))
    torch.testing.assert_close(red.maps().double(), torch.stack(ref), atol=1e-6, rtol=0)


def test_keep_layers_and_errors():
    model, x = make_model("vit")
    with torch.no_grad(), vitlens.capture(model, reduce="cls", keep=[-1]) as cache:
        model(x)
    assert sorted(cache._store) == [2]
    torch.testing.assert_close(cache.attention(-1)[:, :, 0, 1:], vitlens.cls_attention(cache, -1, head=None).flatten(2))
    with pytest.raises(ValueError, match="keep=True"):
        cache.attention(0)
    with pytest.raises(ValueError, match="records nothing"):
        with vitlens.capture(model, keep=False):
            pass
    with pytest.raises(ValueError, match="did you mean 'rollout'"):
        with vitlens.capture(model, reduce=["rolout"]):
            pass
    with pytest.raises(TypeError, match="reduce= takes"):
        with vitlens.capture(model, reduce=[3]):
            pass
    with pytest.raises(ValueError, match="every layer from layer 0"):
        with vitlens.capture(model, layers=[1, 2], reduce=["rollout"]):
            pass
    with pytest.raises(ValueError, match="rows='all'"):
        with vitlens.capture(model, rows="prefix", reduce=["distance"]):
            pass
    with pytest.raises(ValueError, match="not recorded"):
        with vitlens.capture(model, layers=[0], reduce="cls", keep=[1]):
            pass
    with pytest.raises(ValueError, match="head must be"):
        Rollout("median")
    with pytest.raises(ValueError, match="statistic"):
        HeadStatistic("variance")
    # a model without CLS: the CLS reduction refuses at its first layer, with the reason
    gap, xg = make_model("gap_no_cls")
    with pytest.raises(ValueError, match="no CLS token"):
        with torch.no_grad(), vitlens.capture(gap, reduce="cls"):
            gap(xg)


def test_cls_reduction_works_from_prefix_rows_and_layer_subsets():
    model, x = make_model("deit_distilled")
    with torch.no_grad(), vitlens.capture(model, layers=[0, 2]) as full:
        model(x)
    with torch.no_grad(), vitlens.capture(model, layers=[0, 2], rows="prefix", reduce=[ClsRows()]) as red:
        model(x)
    for layer in (0, 2):
        torch.testing.assert_close(vitlens.cls_attention(red, layer), vitlens.cls_attention(full, layer),
                                   atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="not recorded"):
        vitlens.cls_attention(red, 1)


def test_clear_and_reuse_of_reduction_objects():
    model, x = make_model("vit")
    roll = Rollout()
    with torch.no_grad(), vitlens.capture(model, reduce=[roll]) as cache:
        model(x)
        first = vitlens.rollout(cache).clone()
        cache.clear()
        assert not roll.ready() and roll.held_bytes() == 0
        model(x[:1])
    assert vitlens.rollout(cache).shape[0] == 1
    torch.testing.assert_close(vitlens.rollout(cache), first[:1])
    with torch.no_grad(), vitlens.capture(model, reduce=[roll]) as again:   # a new capture starts it afresh
        model(x)
    torch.testing.assert_close(vitlens.rollout(again), first)


# ----------------------------------------------------------------- memory held per batch
def _live_storages() -> dict[int, torch.UntypedStorage]:
    """Every tensor storage reachable from Python, by address. The storages are returned (not just
    their sizes) so that a caller holding the dict keeps their memory allocated: otherwise one freed
    during the forward (garbage from an earlier test, collected mid-run) could hand its address to a
    recorded attention tensor, which would then be left out of the count as "already alive"."""
    out: dict[int, torch.UntypedStorage] = {}
    with warnings.catch_warnings():   # isinstance() on torch.distributed's deprecated reduce_op warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for t in tensors:
        s = t.untyped_storage()
        out[s.data_ptr()] = s
    return out


def _held_after_each_layer(model, x, at: set[int] | None = None, **capture_kw) -> list[int]:
    """Bytes of tensor storage alive after each block that were not alive before the forward,
    leaving out the residual stream (the block's input and output, and the first block's input,
    which the caller's frame holds): what the capture holds for attention. ``at``: only after
    these layers (a scan of every Python object costs ~0.1 s). A first, unmeasured forward makes
    what vitlens keeps once per process (the patch distance matrix of each geometry)."""
    with torch.no_grad(), vitlens.capture(model, **capture_kw):
        model(x)
    gc.collect()
    base = _live_storages()            # held until the forward ends: their addresses cannot be reused
    stream: set[int] = set()
    held: list[int] = []

    def pre(_m, inp):
        stream.add(inp[0].untyped_storage().data_ptr())

    def post(m, inp, out):
        if at is not None and list(model.blocks).index(m) not in at:
            return
        skip = stream | {inp[0].untyped_storage().data_ptr(), out.untyped_storage().data_ptr()}
        held.append(sum(s.nbytes() for p, s in _live_storages().items() if p not in base and p not in skip))

    handles = [model.blocks[0].register_forward_pre_hook(pre)]
    handles += [b.register_forward_hook(post) for b in model.blocks]
    try:
        with torch.no_grad(), vitlens.capture(model, **capture_kw):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return held


def _tiny_vit(depth: int):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, depth=depth,
                             num_classes=10).eval()


@pytest.mark.parametrize("grad", [False, True])
def test_memory_held_per_layer_is_the_reductions_only(grad):
    """Counted live storage after every layer equals the prediction: full cache grows by
    B·H·T²·4 per layer; reduced holds R [B, T, T] plus a CLS row and [B, H] per layer."""
    model = _tiny_vit(6)
    B, H, T, N, L = 2, 3, 10, 9, 6
    x = torch.randn(B, 3, 48, 48)
    full = _held_after_each_layer(model, x, grad=grad)
    assert full == [(l + 1) * B * H * T * T * 4 for l in range(L)]
    reduced = _held_after_each_layer(model, x, grad=grad, reduce=["cls", "rollout", "distance"])
    per_layer = held_bytes_estimate(batch=B, layers=L, heads=H, tokens=T, prefix=1)
    assert reduced == per_layer["reduced_after_layer"]
    assert reduced[:-1] == [B * T * T * 4 + (l + 1) * (B * H * N * 4 + B * H * 4) for l in range(L - 1)]
    assert max(reduced) < full[0] + B * T * T * 4
    assert per_layer["full"] == full[-1]


def test_memory_held_for_rollout_does_not_grow_with_depth():
    x = torch.randn(2, 3, 48, 48)
    at = {12: {0, 6, 10, 11}, 24: {0, 12, 22, 23}}
    held = {d: _held_after_each_layer(_tiny_vit(d), x, at[d], reduce=["rollout"]) for d in (12, 24)}
    R = 2 * 10 * 10 * 4
    assert held[12][:-1] == held[24][:-1] == [R] * 3                  # one running product, whatever the depth
    assert held[12][-1] == held[24][-1] == 2 * 9 * 4                  # then only the maps
    full = {d: _held_after_each_layer(_tiny_vit(d), x, {d - 1})[-1] for d in (12, 24)}
    assert full[24] == 2 * full[12] == 24 * 2 * 3 * 10 * 10 * 4


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("class_token", [True, False])
def test_rollout_first_and_last_layer_shortcuts(depth, class_token):
    """The reduction starts from Â_0 itself (no product with the identity) and ends with the
    readout row only (u·Â_L·R); a one-layer model takes both branches at once. Checked against
    rollout's formula written out as the full matrix product."""
    import timm

    torch.manual_seed(depth)
    kw = {} if class_token else dict(class_token=False, global_pool="avg")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, depth=depth, num_classes=5,
                              **kw).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), vitlens.capture(model) as full:
        model(x)
    with torch.no_grad(), vitlens.capture(model, reduce=["rollout"]) as reduced:
        model(x)
    P = full.layout.num_prefix_tokens
    R = None
    for layer in range(depth):
        a = full.attention(layer).double().mean(1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True)
        R = a if R is None else a @ R
    row = R[:, 0, P:] if class_token else R[:, P:, P:].mean(1)
    expected = (row / row.sum(-1, keepdim=True)).reshape(2, 3, 3).float()
    torch.testing.assert_close(vitlens.rollout(reduced), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(vitlens.rollout(full), expected, atol=1e-6, rtol=0)
