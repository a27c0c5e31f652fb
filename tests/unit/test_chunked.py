"""capture(chunk=...) (issue #17): vitlens computes each SDPA-calling layer itself a few images at a
time and hands every chunk to the reductions, so a layer's [B, H, T, T] never exists. Checked
against the unchunked reduce-on-record capture of timm's unfused path (the very probabilities the
model multiplies with v) and the plain full cache, for uneven chunks, mixed whole/chunked layers,
kept layers, and the model's state after success and after an error."""
from __future__ import annotations

import gc
import warnings

import pytest
import timm
import torch

import vitlens
from vitlens.capture.reduce import Reduction
from ..conftest import FAMILY_CASES, make_model

EXTRA_CASES = {
    # RoPE applied to q and k inside the module before its SDPA call
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=56, depth=2)),
    # relative position bias passed to SDPA as an additive mask
    "beit": ("beit_base_patch16_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
}
CASES = [*FAMILY_CASES, *EXTRA_CASES]
NAMES = ["rollout", "distance", "entropy"]


def _model(case: str):
    if case in FAMILY_CASES:
        model, x = make_model(case)
        return model, torch.cat([x, x.flip(-1), x * 0.5])[:5]      # 5 images: uneven chunks
    name, kw = EXTRA_CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    size = kw["img_size"]
    return model, torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))


def _names(model, x) -> list[str]:
    with torch.no_grad(), vitlens.capture(model, layers=[0]) as probe:
        model(x[:1])
    return NAMES + (["cls"] if probe.layout.has_cls else [])


def _run(model, x, **kw):
    with torch.no_grad(), vitlens.capture(model, **kw) as cache:
        out = [model(x), model(x[:1])]                 # two forwards: results appended
    return torch.cat(out), cache


def _results(cache, names):
    got = {"rollout": vitlens.rollout(cache), "distance": vitlens.mean_attention_distance(cache),
           "entropy": vitlens.attention_entropy(cache)}
    if "cls" in names:
        got["cls"] = torch.stack([vitlens.cls_attention(cache, i, head=None) for i in range(cache.num_layers)], 1)
    return got


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [1, 2, "auto"])
def test_chunked_equals_unchunked_and_full_cache(case, chunk):
    model, x = _model(case)
    names = _names(model, x)
    y_chunk, chunked = _run(model, x, reduce=names, chunk=chunk)
    y_whole, whole = _run(model, x, reduce=names, grad=True)     # timm's unfused path, layers whole
    y_plain, full = _run(model, x)                               # fused kernel, probabilities beside it
    # the chunked layers compute what timm's unfused path computes, in the same order
    torch.testing.assert_close(y_chunk, y_whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y_chunk, y_plain, atol=1e-5, rtol=1e-5)
    a, b, c = _results(chunked, names), _results(whole, names), _results(full, names)
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert a[key].shape == c[key].shape and a[key].shape[0] == 6
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)
        # the full cache saw the fused forward's hidden states (equal to ~1e-6 per layer)
        torch.testing.assert_close(a[key], c[key], atol=1e-5, rtol=1e-4)
    assert chunked._store == {}
    _assert_untouched(model, x, y_plain[:5])


class _Spy(Reduction):
    """Records which images of which layer each update received, and what of the batch was alive."""

    kind, rows, chunked = "spy", "all", True

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.clear()

    def clear(self) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self.whole_layer_alive = 0

    def state(self):
        return []

    def update(self, layer, probs, cache, images=None):
        sl = images if images is not None else slice(0, probs.shape[0])
        self.calls.append((layer, sl.start, sl.stop, probs.shape[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            alive = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        # any tensor holding a whole layer's probabilities for the batch, [B, H, T, T]
        self.whole_layer_alive += sum(1 for t in alive if t.dim() == 4 and t.shape[0] == self.batch
                                      and t.shape[1:] == probs.shape[1:])


def test_chunks_cover_the_batch_in_order_and_no_whole_layer_exists():
    model, x = _model("vit")
    spy = _Spy(batch=5)
    with torch.no_grad(), vitlens.capture(model, reduce=[spy, "rollout"], chunk=2):
        model(x)
    want = [(layer, s, min(5, s + 2), min(5, s + 2) - s) for layer in range(3) for s in (0, 2, 4)]
    assert spy.calls == want
    assert spy.whole_layer_alive == 0
    # the same spy sees the whole layer when the capture does not chunk: the check can fail
    with torch.no_grad(), vitlens.capture(model, reduce=[spy], grad=True):
        model(x)
    assert [c[1:] for c in spy.calls] == [(0, 5, 5)] * 3 and spy.whole_layer_alive >= 3


def test_auto_chunk_size_follows_the_byte_budget(monkeypatch):
    from vitlens.capture.adapters import generic

    model, x = _model("vit")                                     # 3 heads, 17 tokens: 3468 B per image
    spy = _Spy(batch=5)
    monkeypatch.setitem(generic.AUTO_CHUNK_BYTES, "cpu", 3 * 17 * 17 * 4 * 2)
    with torch.no_grad(), vitlens.capture(model, reduce=[spy], chunk="auto"):
        model(x)
    assert [c[3] for c in spy.calls if c[0] == 0] == [2, 2, 1]
    monkeypatch.undo()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert generic.chunk_images("auto", 32, 6 * 197 * 197 * 4, cpu) == 4        # ViT-S
    assert generic.chunk_images("auto", 32, 12 * 197 * 197 * 4, cpu) == 2       # ViT-B
    assert generic.chunk_images("auto", 32, 12 * 197 * 197 * 4, gpu) == 32      # the batch whole
    assert generic.chunk_images("auto", 64, 16 * 577 * 577 * 4, gpu) == 12      # ViT-L/14@336
    assert generic.chunk_images(100, 8, 1, cpu) == 8


def test_mixed_whole_and_chunked_layers_and_kept_layers():
    """A module the user switched to timm's unfused path is recorded whole (at attn_drop) between
    chunked layers; rollout's running product takes both. Kept layers are stored from their chunks."""
    model, x = _model("vit")
    names = _names(model, x)
    y_whole, whole = _run(model, x, reduce=names, grad=True, keep=[0, 2])
    model.blocks[1].attn.fused_attn = False
    try:
        y, mixed = _run(model, x, reduce=names, chunk=2, keep=[0, 2])
    finally:
        model.blocks[1].attn.fused_attn = True
    torch.testing.assert_close(y, y_whole, atol=1e-6, rtol=1e-6)
    a, b = _results(mixed, names), _results(whole, names)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)
    for layer in (0, 2):
        assert mixed.attention(layer).shape == (6, 3, 17, 17)
        torch.testing.assert_close(mixed.attention(layer), whole.attention(layer), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="recorded into reductions only"):
        mixed.attention(1)


def test_prefix_rows_and_a_family_that_cannot_chunk_record_whole_layers():
    """rows='prefix' never forms T x T (nothing to chunk); Swin records whole windowed layers."""
    from ..integration.test_swin import make_swin

    model, x = _model("vit")
    spy = _Spy(batch=5)
    spy.rows = "prefix"
    with torch.no_grad(), vitlens.capture(model, rows="prefix", reduce=[spy, "cls"], chunk=1) as cache:
        y = model(x)
    assert [c[3] for c in spy.calls] == [5, 5, 5]
    with torch.no_grad():
        assert torch.equal(y, model(x))                          # the fused kernel ran: bit-identical
    with torch.no_grad(), vitlens.capture(model) as full:
        model(x)
    torch.testing.assert_close(vitlens.cls_attention(cache, -1), vitlens.cls_attention(full, -1))
    swin, xs = make_swin("swin_small")
    with torch.no_grad(), vitlens.capture(swin, reduce=["rollout"], chunk=1) as reduced:
        swin(xs)
    with torch.no_grad(), vitlens.capture(swin) as full:
        swin(xs)
    torch.testing.assert_close(vitlens.rollout(reduced), vitlens.rollout(full), atol=1e-6, rtol=0)


def _assert_untouched(model, x, reference):
    """No hook or flag left behind: the fused forward runs and gives the plain output bit for bit."""
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert all(b.attn.fused_attn for b in model.blocks if hasattr(getattr(b, "attn", None), "fused_attn"))
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_model_state_after_an_error_inside_a_chunked_capture():
    model, x = _model("vit")
    with torch.no_grad():
        reference = model(x)

    class Boom(_Spy):
        def update(self, layer, probs, cache, images=None):
            if layer == 1 and images is not None and images.start == 2:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), \
            vitlens.capture(model, reduce=[Boom(5)], chunk=2):
        model(x)
    _assert_untouched(model, x, reference)


def test_gradients_still_flow_when_the_forward_needs_them():
    """With autograd on and a model whose parameters need gradients, a chunked capture records the
    layers whole beside the fused kernel (its own matmuls would not be differentiable)."""
    model, x = _model("vit")
    spy = _Spy(batch=5)
    with vitlens.capture(model, reduce=[spy], chunk=1):
        y = model(x)
    y.sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert [c[3] for c in spy.calls] == [5, 5, 5]
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kw,match", [
    (dict(chunk=0, reduce=["rollout"]), "positive number of images or 'auto'"),
    (dict(chunk="fast", reduce=["rollout"]), "positive number of images or 'auto'"),
    (dict(chunk=True, reduce=["rollout"]), "positive number of images or 'auto'"),
    (dict(chunk=2), "pass reduce"),
    (dict(chunk=2, reduce=["rollout"], grad=True), "Use one or the other"),
])
def test_chunk_argument_errors(kw, match):
    model, _x = _model("vit")
    with pytest.raises(ValueError, match=match), vitlens.capture(model, **kw):
        pass


def test_a_reduction_that_takes_whole_layers_is_refused_with_chunk():
    class Whole(_Spy):
        chunked = False

    model, _x = _model("vit")
    with pytest.raises(ValueError, match="takes whole layers only"), \
            vitlens.capture(model, reduce=[Whole(5)], chunk=2):
        pass
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_export_chunks_on_an_accelerator_only():
    """The export's policy (vitlens.batch.export_chunk), and the chunked export values on the CPU
    when ExportOptions(chunk=...) asks: the same as the whole-layer export to float32 rounding."""
    import dataclasses

    from vitlens import batch

    assert batch.export_chunk(torch.device("cuda")) == "auto"
    assert batch.export_chunk(torch.device("cpu")) is None
    from ..integration.test_swin import make_swin

    swin, _xs = make_swin("swin_small")                            # an adapter that records whole layers
    assert batch.plan_analyses(swin, batch.ExportOptions(chunk=2)).chunk is None
    model, x = _model("dinov2_reg4")
    plan = batch.plan_analyses(model, batch.ExportOptions())
    assert plan.chunk is None and plan.reductions
    forced = batch.plan_analyses(model, batch.ExportOptions(chunk=2))
    assert forced == dataclasses.replace(plan, chunk=2)
    whole, _ = batch._analyse(model, x, plan, "fp32")
    chunked, _ = batch._analyse(model, x, forced, "fp32")
    assert whole.keys() == chunked.keys() == {"logits", "cls_attention", "rollout", "attention_distance"}
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kw,match", [(dict(chunk=0), "positive number"), (dict(chunk="x"), "positive number"),
                                      (dict(chunk=2, reduce=False), "keep `reduce=True`")])
def test_export_chunk_option_errors(kw, match):
    from vitlens import batch
    from vitlens.errors import VitlensError

    with pytest.raises(VitlensError, match=match):
        batch.ExportOptions(**kw)


@pytest.mark.parametrize("use_workspace", [False, True])
@pytest.mark.parametrize("rows", [slice(None), slice(0, 2)])
@pytest.mark.parametrize("mask_kind", ["none", "float", "bool", "causal"])
def test_attention_probs_against_the_formula(use_workspace, rows, mask_kind):
    """softmax(q·kᵀ·scale + mask) written out in float64, for prefix rows and every mask kind,
    into fresh tensors or the reused workspace (twice: a stale buffer must not leak through)."""
    from vitlens.capture.adapters.generic import Workspace, attention_probs

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g)
    mask = {"none": None, "causal": None, "float": torch.randn(1, 3, 7, 7, generator=g),
            "bool": torch.rand(2, 1, 7, 7, generator=g) > 0.3}[mask_kind]
    if mask_kind == "bool":
        mask[..., 0] = True                                   # every row keeps a key
    scores = (q.double() @ k.double().transpose(-2, -1)) * 0.3
    if mask_kind == "float":
        scores = scores + mask.double()
    elif mask_kind == "bool":
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask_kind == "causal":
        scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    want = scores.softmax(-1)[:, :, rows].float()
    ws = Workspace(torch.device("cpu")) if use_workspace else None
    for _ in range(2):
        got = attention_probs(q, k, 0.3, mask, mask_kind == "causal", rows, workspace=ws)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
