"""Oracle tests generated from every registered adapter's ``test_models``.

The reference is independent of the adapters' hooks: the model runs its own unfused path
(every ``fused_attn`` flag off) while a ``TorchFunctionMode`` records each softmax the
model computes inside each attention module. The recorded attention must equal those
probabilities to 1e-5, and on the default path the model's outputs must be bit-identical
inside and outside ``capture``.

An entry of ``test_models`` is either ``(timm name, create_model kwargs)`` or a builder, a
callable returning the model (Hugging Face transformers families: ``builder()`` gives the
model with its default attention implementation, sdpa, and ``builder("eager")`` the same
weights on transformers' eager path). For builders the reference is transformers' own
probabilities: ``output_attentions=True`` on the eager twin (the weights each attention
module returns, which is what ``output_attentions`` collects).
"""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import vitlens
from vitlens.capture.adapters import adapter_for, registered_adapters

def _entry(entry) -> tuple[object, dict]:
    """``(timm name or builder, kwargs)`` of one ``test_models`` entry."""
    return (entry, {}) if callable(entry) else (entry[0], entry[1])


def _transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _param(cls, entry, i):
    name, kwargs = _entry(entry)
    label = getattr(name, "__name__", name)
    marks = [] if not callable(name) or _transformers_available() else \
        [pytest.mark.skip(reason="transformers is not installed (vitlens[hf])")]
    return pytest.param(cls, name, kwargs, id=f"{cls.family}-{label}-{i}", marks=marks)


CASES = [_param(cls, entry, i) for cls in registered_adapters() for i, entry in enumerate(cls.test_models)]
_SOFTMAX = {torch.Tensor.softmax, torch.softmax, torch.nn.functional.softmax}
_MATMUL = {torch.Tensor.__matmul__, torch.matmul, torch.Tensor.matmul}


def build(name, kwargs: dict) -> nn.Module:
    if callable(name):
        return name()
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()


def transformers_reference(builder, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{attention module path: probabilities}`` from transformers' eager path, ``output_attentions=True``."""
    eager = builder("eager")
    assert torch.equal(next(iter(eager.state_dict().values())), next(iter(model.state_dict().values())))
    paths = [p for p, _ in adapter_for(model).attention_modules()]
    seen: dict[str, torch.Tensor] = {}
    handles = [eager.get_submodule(p).register_forward_hook(
        lambda _m, _a, out, p=p: seen.__setitem__(p, out[1].detach().clone())) for p in paths]
    try:
        with torch.no_grad():
            out = eager(x, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    attentions = getattr(out, "attentions", None)
    if attentions is not None and len(attentions) == len(paths):  # flat models: one per layer
        for p, a in zip(paths, attentions):
            assert torch.equal(a, seen[p])
    missing = [p for p in paths if seen.get(p) is None]
    assert not missing, f"no eager attention weights from {missing}"
    return seen


def logits_or_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def input_for(model: nn.Module) -> torch.Tensor:
    h, w = adapter_for(model).default_input_size()
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))


class _SoftmaxRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.current: list[str] = []
        self.seen: dict[str, list[torch.Tensor]] = {}
        self.multiplied: dict[str, list[torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _SOFTMAX and self.current:
            self.seen.setdefault(self.current[-1], []).append(out.detach().clone())
        if func in _MATMUL and self.current and len(args) == 2 and args[0].dim() >= 4 \
                and args[1].dim() == args[0].dim() and args[1].shape[-2] == args[0].shape[-1]:
            # a [.., Tq, Tk] @ [.., Tk, d] product: the last one in the module is weights @ v
            self.multiplied.setdefault(self.current[-1], []).append(args[0].detach().clone())
        return out


def oracle(model: nn.Module, x: torch.Tensor, *, multiplied: bool = False,
           counts: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """``{attention module path: the last softmax it computed}`` with the model's unfused path.

    ``multiplied=True``: instead, the left operand of the last ``weights @ v`` product in
    the module -- the reference for layers whose weights are not the softmax itself
    (``LayerSpec.softmax`` False, e.g. talking-heads attention mixes heads after it; or a
    module that computes several softmaxes and applies a combination of them, e.g.
    ConViT's gated mixture of a content and a positional softmax). ``counts`` receives
    how many softmaxes each module computed in the forward.
    """
    paths = [p for p, _ in adapter_for(model).attention_modules()]
    flags = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    rec = _SoftmaxRecorder()
    handles = []
    for p in paths:
        mod = model.get_submodule(p)
        handles.append(mod.register_forward_pre_hook(lambda _m, _a, p=p: rec.current.append(p)))
        handles.append(mod.register_forward_hook(lambda _m, _a, _o: rec.current.pop() and None))
    try:
        for m, _ in flags:
            m.fused_attn = False
        with torch.no_grad(), rec:
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, old in flags:
            m.fused_attn = old
    if counts is not None:
        counts.update({p: len(rec.seen.get(p, ())) for p in paths})
    seen = rec.multiplied if multiplied else rec.seen
    missing = [p for p in paths if p not in seen]
    assert not missing, f"no {'weights @ v product' if multiplied else 'softmax'} seen in {missing}"
    return {p: seen[p][-1] for p in paths}


def test_every_adapter_has_test_models():
    for cls in registered_adapters():
        assert cls.test_models, f"{cls.__name__} ({cls.family}) lists no test_models for the oracle tests"


@pytest.mark.parametrize("cls,name,kwargs", CASES)
def test_recorded_attention_equals_the_models_own_softmax(cls, name, kwargs):
    model = build(name, kwargs)
    assert type(adapter_for(model)) is cls, f"{name} is claimed by {adapter_for(model).family}, not {cls.family}"
    x = input_for(model)
    with torch.no_grad():
        plain = logits_or_tensor(model(x))
    with torch.no_grad(), vitlens.capture(model) as cache:
        inside = logits_or_tensor(model(x))
    assert torch.equal(plain, inside), "outputs differ inside capture on the default path"
    counts: dict[str, int] = {}
    ref = transformers_reference(name, model, x) if callable(name) else oracle(model, x, counts=counts)
    desc = adapter_for(model).describe(tuple(x.shape[-2:]))
    assert len(desc.layers) == cache.num_layers == len(ref)
    # the model applies the softmax itself unless the weights are declared otherwise or the
    # module combines several softmaxes: then the reference is the product's left operand
    combined = {p for p, n in counts.items() if n > 1}
    weights = oracle(model, x, multiplied=True) if combined or not all(s.softmax for s in desc.layers) else {}
    for spec in desc.layers:
        got = cache.attention(spec.index).float()
        want = (ref if spec.softmax and spec.hook_point not in combined else weights)[spec.hook_point].float()
        if not spec.softmax:  # declared non-probabilities: they must not be (rows away from 1)
            assert (got.sum(-1) - 1).abs().max() > 1e-3, f"{spec.hook_point} is declared softmax=False"
        if spec.kind in ("window", "grid"):
            # timm computes windows batched as [B*nW, H, n, n] (SAM: [B*nW*H, n, n]), or
            # heads-first [B, H, nW, n, n]
            if want.dim() in (3, 4):
                want = want.reshape(got.shape)
            elif want.shape != got.shape:
                want = want.transpose(1, 2)
        assert got.shape == want.shape, (spec, got.shape, want.shape)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{name} {spec.hook_point}")


@pytest.mark.parametrize("cls,name,kwargs", CASES)
def test_grad_path_records_the_same_probabilities(cls, name, kwargs):
    model = build(name, kwargs)
    x = input_for(model)
    with torch.no_grad(), vitlens.capture(model) as fast:
        model(x)
    with vitlens.capture(model, grad=True) as slow:
        model(x)
    for layer in fast.layers:
        torch.testing.assert_close(slow.attention(layer).detach().float(), fast.attention(layer).float(),
                                   atol=1e-5, rtol=0)


def _hook_state(model: nn.Module):
    return ([(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for n, m in model.named_modules()],
            [(n, getattr(m, "fused_attn", None), getattr(m, "grad_checkpointing", None),
              getattr(m, "gradient_checkpointing", None)) for n, m in model.named_modules()],
            torch._C._len_torch_function_stack())  # no TorchFunctionMode (transformers' tap) left active


@pytest.mark.parametrize("cls,name,kwargs", CASES)
@pytest.mark.parametrize("grad", [False, True])
def test_hooks_and_flags_restored_after_success_and_after_an_error(cls, name, kwargs, grad):
    model = build(name, kwargs)
    x = input_for(model)
    before = _hook_state(model)
    with vitlens.capture(model, grad=grad):
        model(x)
    assert _hook_state(model) == before
    with pytest.raises(RuntimeError, match="injected"):
        with vitlens.capture(model, grad=grad):
            raise RuntimeError("injected")
    assert _hook_state(model) == before
    # an error in the middle of the forward, after the first layers were recorded
    last = adapter_for(model).attention_modules()[-1][1]

    def fail(*_):
        raise RuntimeError("injected mid-forward")

    handle = last.register_forward_pre_hook(fail)
    try:
        before = _hook_state(model)
        with pytest.raises(RuntimeError, match="injected mid-forward"):
            with vitlens.capture(model, grad=grad):
                model(x)
        assert _hook_state(model) == before
    finally:
        handle.remove()


@pytest.mark.parametrize("fail_at", [1, 3])
def test_an_install_that_fails_half_way_leaks_nothing(monkeypatch, fail_at):
    model = build("vit_tiny_patch16_224", dict(img_size=32, depth=3))
    before = _hook_state(model)
    real = nn.Module.register_forward_hook
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("hook install failed")
        return real(self, *a, **k)

    monkeypatch.setattr(nn.Module, "register_forward_hook", flaky)
    with pytest.raises(RuntimeError, match="hook install failed"):
        with vitlens.capture(model, grad=True):
            pass
    monkeypatch.undo()
    assert _hook_state(model) == before
