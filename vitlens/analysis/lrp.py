"""Layer-wise relevance propagation for ViTs: AttnLRP and CP-LRP as one modified backward pass.

Sources:

- Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
  Transformers", ICML 2024, https://arxiv.org/abs/2402.05602.
- Ali et al., "XAI for Transformers: Better Explanations through Conservative
  Propagation", ICML 2022, https://arxiv.org/abs/2202.07304 (CP-LRP).

Both are computed as *gradient x input* with modified local gradients (the
"Gradient*Input framework" of the papers and of lxt): if every operation's backward
passes ``g_in`` such that ``x · g_in`` is the relevance the rule assigns to its input
``x``, then one backward pass from the target logit ``y_t`` gives the relevance of every
input, ``R(x) = x ⊙ ∂̃y_t/∂x``. The rules, per operation (``g`` is the incoming
gradient, ``R = z ⊙ g`` the relevance of an output ``z``):

=====================================  ==================================================
operation                              rule (backward)
=====================================  ==================================================
``Linear`` / ``Conv2d`` (with bias)    ε-rule with ε → 0: the plain gradient,
                                       ``R_i = x_i Σ_j w_ji R_j / z_j`` (the bias keeps
                                       its share). ``gamma > 0``: the generalised γ-rule
                                       (Montavon et al. 2019; zennit's ``Gamma``).
LayerNorm, RMSNorm, ``F.normalize``    the standard deviation / norm treated as a
                                       constant (Ali et al. 2022): the centring and the
                                       affine map are linear, so they keep the plain
                                       gradient.
GELU, SiLU, ... (elementwise ``f``)    identity rule ``R_x = R_f(x)``:
                                       ``g_x = g · f(x) / x`` (AttnLRP eq. 9).
softmax (AttnLRP)                      ``R_i = x_i (R_i − s_i Σ_j R_j)`` (AttnLRP
                                       Prop. 3.1), which is exactly ``x`` times the
                                       plain softmax gradient.
``q·kᵀ``, ``A·v``, any product of two  uniform rule (AttnLRP eq. 7): each operand gets
activations (gating)                   half, ``g_a = ½ ∂(ab)/∂a · g``.
attention probabilities (CP-LRP)       detached: relevance flows only through ``v``
                                       (Ali et al. 2022).
additions, reshapes, windows, shifts,  plain gradient (addition splits relevance in
padding, patch merging, pooling        proportion to the summands, ``R_a = a/z · R_z``).
=====================================  ==================================================

Mechanism: during the forward pass a :class:`torch.overrides.TorchFunctionMode`
(:class:`RelevanceRules`) replaces those torch functions with autograd Functions
implementing the rules, whatever model module calls them; activation *modules* (timm's
``GELU``, ``QuickGELU``, ``nn.SiLU``, ...) are wrapped whole by forward hooks. The model
itself is not edited. Fused attention (``F.scaled_dot_product_attention``) is computed
explicitly as ``softmax(q·kᵀ·scale + mask)·v`` with the rules above. Any operation on a
tensor that depends on the input which the rules do not cover (``exp``, ``sqrt``,
division by an activation, ...) raises :class:`~vitlens.UnsupportedModelError` instead of
giving silently wrong relevance.

Conservation: with every bias and position embedding at zero, CP-LRP is exactly
conservative, ``Σ_i R(x_i) = y_t``; AttnLRP's softmax rule absorbs relevance (its Taylor
bias term), as the paper states. ``docs/methods.md`` has the measurements.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError

#: The LRP variants :func:`lrp_relevance` knows.
VARIANTS: tuple[str, ...] = ("attnlrp", "cp-lrp")

_EPS = 1e-12


def _stab(x: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """``x + eps·sign(x)`` with ``sign(0) = +1``: a denominator that is never 0."""
    return x + torch.where(x >= 0, eps, -eps).to(x.dtype)


# ---------------------------------------------------------------- autograd functions
class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a constant factor (uniform rule: 0.5)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g * ctx.factor, None


class _IdentityRule(torch.autograd.Function):
    """Forward returns ``out = f(x)`` (given); backward ``g_x = g · out / x`` (AttnLRP identity rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(out / _stab(x))
        return out.detach()

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return g * ratio, None


class _LayerNormConstStd(torch.autograd.Function):
    """``F.layer_norm`` whose backward treats the standard deviation as a constant.

    ``y = (x − μ(x)) / σ · w + b`` with σ fixed: ``g_x = (ĝ − mean(ĝ)) / σ``, ``ĝ = g · w``
    (the mean over the normalised dimensions).
    """

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):  # type: ignore[override]
        out, _mean, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.dims = tuple(range(-len(normalized_shape), 0))
        ctx.save_for_backward(rstd, weight if weight is not None else torch.ones(()))
        ctx.has_weight = weight is not None
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        rstd, weight = ctx.saved_tensors
        gh = g * weight if ctx.has_weight else g
        gx = (gh - gh.mean(dim=ctx.dims, keepdim=True)) * rstd
        return gx, None, None, None, None


class _RmsNormConstStd(torch.autograd.Function):
    """``F.rms_norm`` with the root mean square treated as a constant: ``g_x = g · w / rms``."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps):  # type: ignore[override]
        dims = tuple(range(-len(normalized_shape), 0))
        e = torch.finfo(x.dtype).eps if eps is None else eps
        rinv = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + e)
        out = x * rinv
        if weight is not None:
            out = out * weight
        ctx.save_for_backward(rinv if weight is None else rinv * weight)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (scale,) = ctx.saved_tensors
        return g * scale, None, None, None


class _NormalizeConstNorm(torch.autograd.Function):
    """``F.normalize`` (``x / max(‖x‖_p, eps)``) with the norm treated as a constant."""

    @staticmethod
    def forward(ctx, x, p, dim, eps):  # type: ignore[override]
        denom = x.norm(p, dim, keepdim=True).clamp_min(eps)
        ctx.save_for_backward(denom)
        return x / denom

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (denom,) = ctx.saved_tensors
        return g / denom, None, None, None


def _gamma_backward(fn: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None, out: torch.Tensor, g: torch.Tensor, gamma: float) -> torch.Tensor:
    """Generalised γ-rule for an affine ``fn(x, W, b)`` (zennit's ``Gamma``), as a gradient.

    With ``W± = W + γ·W^±`` (``W^+ = max(W, 0)``, ``W^- = min(W, 0)``), same for ``b``, and
    ``x^± `` the positive / negative parts of ``x``: for an output ``z_j > 0`` the
    contributions ``x^+·W+ + x^-·W-`` (plus ``b+``) share its relevance, for ``z_j < 0``
    the contributions ``x^+·W- + x^-·W+`` (plus ``b-``); the returned gradient ``g_x``
    gives ``R_x = x · g_x``.
    """
    wp, wn = weight + gamma * weight.clamp(min=0), weight + gamma * weight.clamp(max=0)
    bp = None if bias is None else bias + gamma * bias.clamp(min=0)
    bn = None if bias is None else bias + gamma * bias.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    R = g * out
    with torch.enable_grad():
        xp_, xn_ = xp.detach().requires_grad_(True), xn.detach().requires_grad_(True)
        zp_a, zp_b = fn(xp_, wp, bp), fn(xn_, wn, None)     # z_j > 0: x⁺·W₊ + x⁻·W₋ + b₊
        zn_a, zn_b = fn(xp_, wn, bn), fn(xn_, wp, None)     # z_j < 0: x⁺·W₋ + x⁻·W₊ + b₋
        sp = torch.where(out > 0, R / _stab((zp_a + zp_b).detach(), 1e-9), 0.0)
        sn = torch.where(out < 0, R / _stab((zn_a + zn_b).detach(), 1e-9), 0.0)
        gp = torch.autograd.grad((zp_a, zn_a), xp_, (sp, sn), retain_graph=True)[0]
        gn = torch.autograd.grad((zp_b, zn_b), xn_, (sp, sn))[0]
    return torch.where(x > 0, gp, torch.where(x < 0, gn, 0.0))


class _GammaAffine(torch.autograd.Function):
    """``F.linear`` / ``F.conv2d`` whose backward is the generalised γ-rule."""

    @staticmethod
    def forward(ctx, fn, x, weight, bias, gamma):  # type: ignore[override]
        out = fn(x, weight, bias)
        ctx.fn, ctx.gamma = fn, gamma
        ctx.save_for_backward(x, weight, bias if bias is not None else torch.empty(0), out)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, weight, bias, out = ctx.saved_tensors
        gx = _gamma_backward(ctx.fn, x, weight, bias if ctx.has_bias else None, out, g, ctx.gamma)
        return None, gx, None, None, None


# ------------------------------------------------------------------- the rules mode
def _name(func: Any) -> str:
    return getattr(func, "__name__", "") or str(func)


_DUNDER = {"__add__": "add", "__radd__": "add", "__iadd__": "add", "__sub__": "sub", "__rsub__": "rsub",
           "__isub__": "sub", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul",
           "__matmul__": "matmul", "__rmatmul__": "rmatmul", "__truediv__": "div", "__itruediv__": "div",
           "__div__": "div", "__rtruediv__": "rdiv", "__rdiv__": "rdiv", "__neg__": "neg",
           "__getitem__": "getitem", "__setitem__": "setitem", "__get__": "get", "__pos__": "pos"}

#: Operations that are linear in their tensor inputs (or only move / select entries):
#: the plain gradient is the rule. Matched by name, in-place variants included.
_LINEAR = frozenset("""
add sub neg pos getitem get getattr contiguous clone detach to type type_as float double half bfloat16
view view_as reshape reshape_as flatten unflatten permute transpose t swapaxes movedim expand expand_as
unsqueeze squeeze unbind chunk split tensor_split split_with_sizes narrow select index_select gather take_along_dim
cat concat concatenate stack hstack vstack roll flip repeat repeat_interleave tile pad
mean sum nansum avg_pool1d avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d dropout dropout1d dropout2d
masked_fill where zero zeros_like new_zeros new_empty new_ones empty_like ones_like
conv1d conv2d linear mul div true_divide matmul bmm einsum softmax scaled_dot_product_attention
layer_norm rms_norm normalize setitem copy requires_grad_ numel size dim is_floating_point
eq ne ge gt le lt isnan isinf isfinite sign argmax argmin argsort
""".split())

#: Elementwise non-linearities with the identity rule ``g_x = g · f(x) / x``.
_ELEMENTWISE = frozenset("gelu silu relu relu6 leaky_relu elu selu celu mish hardswish softplus sigmoid tanh "
                         "hardtanh hardsigmoid quick_gelu".split())


def _activation_module_types() -> tuple[type, ...]:
    """Elementwise activation modules: torch's and every module class in ``timm.layers.activations``."""
    types: list[type] = [nn.GELU, nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
                         nn.Hardswish, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid]
    try:
        import inspect

        from timm.layers import activations
        types += [c for _, c in inspect.getmembers(activations, inspect.isclass)
                  if issubclass(c, nn.Module) and c.__module__ == activations.__name__]
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(dict.fromkeys(types))


def _grad_tensor(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.requires_grad


def _any_grad(args: Sequence[Any], kwargs: dict) -> bool:
    for a in list(args) + list(kwargs.values()):
        if _grad_tensor(a):
            return True
        if isinstance(a, (list, tuple)) and any(_grad_tensor(b) for b in a):
            return True
    return False


class RelevanceRules(TorchFunctionMode):
    """A torch function mode under which a forward pass builds the LRP backward graph.

    Inside ``with RelevanceRules("attnlrp"):`` every torch function called on a tensor
    that requires grad is either kept (linear and structural operations: the plain
    gradient is the rule), replaced by an autograd Function with the LRP rule (see the
    module docstring), or refused with :class:`~vitlens.UnsupportedModelError` (an
    operation no rule covers). Parameters must not require grad (only tensors that
    depend on the input do): :func:`lrp_relevance` takes care of that. Activation
    modules are handled by :func:`relevance_rules`, which also installs their hooks.

    Args:
        variant: ``"attnlrp"`` or ``"cp-lrp"``.
        gamma: γ of the generalised γ-rule for every ``F.linear`` (0 = ε-rule, ε → 0).
        conv_gamma: γ for ``F.conv2d`` / ``F.conv1d`` (the patch embedding).
    """

    def __init__(self, variant: str = "attnlrp", gamma: float = 0.0, conv_gamma: float = 0.0) -> None:
        super().__init__()
        self.variant, self.gamma, self.conv_gamma = _check_variant(variant), float(gamma), float(conv_gamma)
        self.passthrough = 0        # > 0 inside a wrapped activation module: its inner ops are not ruled
        self.counts: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.passthrough or not _any_grad(args, kwargs):
            return func(*args, **kwargs)
        raw = _name(func)
        name = _DUNDER.get(raw, raw)
        if name.endswith("_") and not name.startswith("_") and name[:-1] in _LINEAR | _ELEMENTWISE:
            name = name[:-1]            # in-place variant (add_, mul_, gelu_, ...)
        if name in ("mul", "matmul", "rmatmul", "bmm"):
            a, b = args[0], args[1]
            if _grad_tensor(a) and _grad_tensor(b):   # product of two activations: uniform rule
                self._count("uniform")
                a, b = _ScaleGrad.apply(a, 0.5), _ScaleGrad.apply(b, 0.5)
                return func(a, b, *args[2:], **kwargs)
            return func(*args, **kwargs)
        if name == "einsum":
            ops = [a for a in args[1:] if isinstance(a, torch.Tensor)] if isinstance(args[0], str) else []
            if len(ops) == 2 and all(_grad_tensor(o) for o in ops):
                self._count("uniform")
                return func(args[0], *(_ScaleGrad.apply(o, 0.5) for o in ops))
            if sum(_grad_tensor(o) for o in ops) <= 1 and ops:
                return func(*args, **kwargs)
            raise UnsupportedModelError(f"relevance rules: torch.einsum with operands {args[0]!r} of which "
                                        f"{sum(_grad_tensor(o) for o in ops)} depend on the input is not covered")
        if name in ("div", "true_divide"):
            if len(args) > 1 and _grad_tensor(args[1]):
                raise UnsupportedModelError(
                    "relevance rules: a division by a tensor that depends on the input (a hand-written norm?) "
                    "has no LRP rule here; vitlens covers F.layer_norm, F.rms_norm and F.normalize")
            return func(*args, **kwargs)
        if name == "softmax" or name == "_softmax":
            out = func(*args, **kwargs)
            self._count("softmax")
            return out.detach() if self.variant == "cp-lrp" else out
        if name == "scaled_dot_product_attention":
            self._count("sdpa")
            return self._sdpa(*args, **kwargs)
        if name == "linear":
            x, w = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if _grad_tensor(w) or _grad_tensor(b):
                raise UnsupportedModelError("relevance rules: F.linear whose weight depends on the input is not "
                                            "covered (parameters must not require grad during LRP)")
            if self.gamma:
                self._count("gamma")
                return _GammaAffine.apply(F.linear, x, w, b, self.gamma)
            return func(*args, **kwargs)
        if name in ("conv1d", "conv2d"):
            if self.conv_gamma and not any(_grad_tensor(a) for a in args[1:]):
                self._count("gamma")
                rest, kw = args[3:], dict(kwargs)
                x, w, b = args[0], args[1], args[2] if len(args) > 2 else kw.pop("bias", None)

                def conv(x_, w_, b_, _f=func, _rest=rest, _kw=kw):
                    return _f(x_, w_, b_, *_rest, **_kw)
                return _GammaAffine.apply(conv, x, w, b, self.conv_gamma)
            return func(*args, **kwargs)
        if name == "layer_norm":
            self._count("layer_norm")
            x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            b = args[3] if len(args) > 3 else kwargs.get("bias")
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            return _LayerNormConstStd.apply(x, list(shape), w, b, eps)
        if name == "rms_norm":
            self._count("rms_norm")
            x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            eps = args[3] if len(args) > 3 else kwargs.get("eps")
            return _RmsNormConstStd.apply(x, list(shape), w, eps)
        if name == "normalize":
            self._count("normalize")
            x = args[0]
            p = args[1] if len(args) > 1 else kwargs.get("p", 2.0)
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 1)
            eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-12)
            return _NormalizeConstNorm.apply(x, p, dim, eps)
        if name in _ELEMENTWISE:
            self._count("identity")
            with torch.no_grad():
                out = func(*args, **kwargs)
            return _IdentityRule.apply(args[0], out)
        if name == "masked_fill":
            if len(args) > 2 and _grad_tensor(args[2]):
                raise UnsupportedModelError("relevance rules: masked_fill with a value that depends on the input")
            return func(*args, **kwargs)
        if name == "where":
            if len(args) > 0 and _grad_tensor(args[0]):
                raise UnsupportedModelError("relevance rules: torch.where with a condition that requires grad")
            return func(*args, **kwargs)
        if name in _LINEAR:
            return func(*args, **kwargs)
        raise UnsupportedModelError(
            f"relevance rules: the model applies {raw!r} to a tensor that depends on the input, and no LRP rule "
            f"covers it (covered: linear maps and reshapes, layer/RMS norm, F.normalize, elementwise activations, "
            f"softmax, products of activations). vitlens refuses rather than give wrong relevance")

    def _sdpa(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """``softmax(q·kᵀ·scale + mask)·v``, spelled out so the rules apply to each step."""
        if enable_gqa:
            raise UnsupportedModelError("relevance rules: grouped-query attention (enable_gqa) is not covered")
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = self.__torch_function__(torch.matmul, (), (q, k.transpose(-2, -1))) * scale
        if is_causal:
            n_q, n_k = q.shape[-2], k.shape[-2]
            keep = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        attn = self.__torch_function__(torch.softmax, (), (scores, -1))
        return self.__torch_function__(torch.matmul, (), (attn, v))


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"LRP variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return variant


@contextlib.contextmanager
def relevance_rules(model: nn.Module, variant: str = "attnlrp", gamma: float = 0.0,
                    conv_gamma: float = 0.0) -> Iterator[RelevanceRules]:
    """Forward passes of ``model`` inside this block build the LRP backward graph.

    Installs :class:`RelevanceRules` and, on every elementwise activation module of
    ``model`` (``nn.GELU``, timm's ``QuickGELU``, ...), a forward hook that applies the
    identity rule to the module as a whole. Hooks are removed on exit, also after an
    exception. Gradient x input of the input then gives its relevance.
    """
    rules = RelevanceRules(variant, gamma, conv_gamma)
    act_types = _activation_module_types()
    handles = []

    def enter(_m, _args):
        rules.passthrough += 1

    def leave(_m, args, out):
        rules.passthrough -= 1
        x = args[0] if args else None
        if rules.passthrough == 0 and _grad_tensor(x) and isinstance(out, torch.Tensor) and out.shape == x.shape:
            rules._count("identity")
            rules.passthrough += 1
            try:
                return _IdentityRule.apply(x, out)
            finally:
                rules.passthrough -= 1
        return None

    try:
        for m in model.modules():
            if isinstance(m, act_types):
                handles.append(m.register_forward_pre_hook(enter))
                handles.append(m.register_forward_hook(leave, always_call=True))
        with rules:
            yield rules
    finally:
        for h in handles:
            h.remove()


def lrp_relevance(model: nn.Module, images: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
                  *, variant: str = "attnlrp", gamma: float = 0.0, conv_gamma: float = 0.0,
                  extra_inputs: Sequence[torch.Tensor] = ()):
    """Relevance of every input pixel for the target logit, by AttnLRP or CP-LRP.

    One forward pass under :func:`relevance_rules` and one backward pass from
    ``Σ_b y_{b, t_b}`` (images do not interact), then ``R(x) = x ⊙ ∂̃y_t/∂x`` in the model's
    normalised input space. The model is left as it was (:func:`preserved_model_state`).

    Args:
        model: a supported model (every family vitlens records).
        images: ``[B, 3, H, W]`` preprocessed batch.
        target: the class per image (None: the predicted class).
        variant: ``"attnlrp"`` or ``"cp-lrp"``.
        gamma, conv_gamma: γ-rule for the linear layers / the patch-embedding convolution.
        extra_inputs: tensors (e.g. the model's class-token parameter) whose relevance ``t ⊙ ∂̃y_t/∂t`` is
            returned too (they are made to require grad for the pass).

    Returns:
        ``(relevance [B, 3, H, W], logits [B, C], target [B], layout, [extra relevance])``,
        all detached.
    """
    from ..capture import adapter_for, logits_of
    from .gradients import _fresh_input, _grad_mode, preserved_model_state, resolve_target

    _check_variant(variant)
    for name, v in (("gamma", gamma), ("conv_gamma", conv_gamma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"{name} must be a number >= 0 (0 = the ε-rule), got {v!r}")
    with preserved_model_state(model), _grad_mode():
        for p in model.parameters():
            p.requires_grad_(False)
        extras = [t for t in extra_inputs]
        for t in extras:
            t.requires_grad_(True)
        x = _fresh_input(images)
        adapter = adapter_for(model)
        layout = adapter.layout_for(tuple(images.shape[-2:]))
        with contextlib.ExitStack() as stack:
            adapter.relevance_context(stack)  # e.g. a head whose output the logits do not use: off
            with relevance_rules(model, variant, gamma, conv_gamma):
                logits = logits_of(model, model(x))
        tgt = resolve_target(target, logits)
        score = logits.gather(1, tgt[:, None]).sum()
        grads = torch.autograd.grad(score, [x, *extras], allow_unused=True)
        rel = (x * grads[0]).detach()
        extra_rel = [(t * g).detach() if g is not None else torch.zeros_like(t) for t, g in zip(extras, grads[1:])]
    return rel, logits.detach(), tgt, layout, extra_rel
