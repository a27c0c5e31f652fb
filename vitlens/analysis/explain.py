"""One entry point for every patch map: ``vitlens.explain(model, images, method=..., target=...)``.

Every method is a registered :class:`~vitlens.analysis.registry.Method` (this module
registers the built-in ones; ``vitlens.methods()`` lists them with their options, cost,
families and paper; ``docs/methods.md`` has the formulas and when to believe each).
:func:`explain` is a thin façade: it looks the method up, builds its options dataclass,
checks the images, runs the method with the model's state preserved, and returns the maps
(or, with ``details=True``, an :class:`Explanation`).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple, Sequence, overload

import torch
from torch import nn

from .._util import maps_html, maps_repr
from ..capture import TokenLayout, adapter_for, capture, logits_of, require_logits
from .cls_attention import HEAD_FUSIONS, cls_attention
from .gradients import (POOLINGS, attention_gradients, chefer_map, grad_rollout, gradcam, gradcam_modules,
                        input_x_gradient, integrated_gradients, pool_to_patches, preserved_model_state,
                        reduce_pixels, resolve_target)
from .lrp import lrp_relevance
from .registry import MethodOutput, get_method, method_names, methods, register_method
from .rollout import rollout


def __getattr__(name: str) -> Any:
    """Views of the registry under their old names (``METHODS``, ``OPTIONS``, ``CLASS_AGNOSTIC``)."""
    if name == "METHODS":
        return method_names()
    if name == "OPTIONS":
        return {m.name: m.defaults for m in methods()}
    if name == "CLASS_AGNOSTIC":
        return tuple(m.name for m in methods() if not m.class_specific)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Explanation(NamedTuple):
    """Result of :func:`explanation`: the maps and everything that made them."""

    maps: torch.Tensor        #: ``[B, gh, gw]`` float32 (``[B, H, W]`` with ``pixels=True``; cls ``head=None``: ``[B, heads, gh, gw]``)
    logits: torch.Tensor      #: ``[B, C]`` the model's outputs on ``images`` (detached)
    target: torch.Tensor      #: ``[B]`` long, the class each map explains
    layout: TokenLayout       #: token geometry of the input
    method: str
    options: dict[str, Any]   #: every option of the method, defaults filled in

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that made the maps: ``method`` and every option."""
        return {"method": self.method, **self.options}

    def __repr__(self) -> str:
        return maps_repr("Explanation", self)

    def _repr_html_(self) -> str:
        return maps_html("Explanation", self)


def check_method(method: str) -> str:
    """Return ``method`` if it is registered, else raise ValueError listing the methods."""
    return get_method(method).name


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a [B, 3, H, W] tensor (see vitlens.preprocess), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be a batch [B, C, H, W], got shape {tuple(images.shape)}; "
                         f"add a batch dimension with images[None] for one image")


# ---------------------------------------------------------------------------- methods
def _light_forward(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, TokenLayout]:
    """Logits and token layout from one forward that records as little as possible."""
    rows = "prefix" if adapter_for(model).num_prefix_tokens else "all"
    with torch.no_grad(), capture(model, layers=[-1], rows=rows) as cache:
        logits = logits_of(model, model(images))
    assert cache.layout is not None
    return logits, cache.layout


def _check_pool(pool: str) -> None:
    if pool not in POOLINGS:
        raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")


@dataclass(frozen=True)
class ClsOptions:
    """Options of ``cls``."""

    layer: int = -1                  #: layer whose CLS row is read; negative counts from the end
    head: str | int | None = "mean"  #: "mean"/"max"/"min" fusion, a head index, or None for every head


@register_method("cls", ClsOptions, summary="CLS-token attention of one layer",
                 cost="1 forward (the CLS row only)", class_specific=False,
                 families=("VisionTransformer", "BEiT", "EVA"))
def _cls(model: nn.Module, images: torch.Tensor, target: Any, opts: ClsOptions) -> MethodOutput:
    """CLS attention map of layer l: ``A_l[:, :, cls, prefix:]`` fused over heads, on the patch grid.

    :func:`vitlens.cls_attention`; needs a CLS token (DESIGN.md §4). With ``head=None``
    the maps are ``[B, heads, gh, gw]``.
    """
    rows = "prefix" if adapter_for(model).num_prefix_tokens else "all"
    with torch.no_grad(), capture(model, layers=[opts.layer], rows=rows) as cache:
        logits = logits_of(model, model(images))
    maps = cls_attention(cache, layer=opts.layer, head=opts.head)
    assert cache.layout is not None
    return MethodOutput(maps, logits, cache.layout, {"layer": cache.layers[0]})


@dataclass(frozen=True)
class RolloutOptions:
    """Options of ``rollout``."""

    head: str = "mean"               #: head fusion: "mean", "max" or "min"
    discard_ratio: float = 0.0       #: fraction of the lowest fused entries set to 0 per layer, in [0, 1)


@register_method("rollout", RolloutOptions, summary="attention rollout",
                 cost="1 forward + O(L·T²) per image", class_specific=False,
                 paper="Abnar & Zuidema, ACL 2020, https://arxiv.org/abs/2005.00928")
def _rollout(model: nn.Module, images: torch.Tensor, target: Any, opts: RolloutOptions) -> MethodOutput:
    """Attention rollout: ``Â_l = 0.5·fuse_h(A_l) + 0.5·I`` rows renormalised, ``R = Â_L···Â_1``, map ``R[cls, prefix:]``.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020; the
    definition, the discard step and the window-aware Swin version are in
    :func:`vitlens.rollout`. Maps sum to 1.
    """
    if opts.head not in HEAD_FUSIONS:
        raise ValueError(f"rollout fuses heads by one of {HEAD_FUSIONS}, got head={opts.head!r}; "
                         f"per-head maps exist only for method 'cls'")
    with torch.no_grad(), capture(model) as cache:
        logits = logits_of(model, model(images))
    maps = rollout(cache, head=str(opts.head), discard_ratio=opts.discard_ratio)
    assert cache.layout is not None
    return MethodOutput(maps, logits, cache.layout, {})


@dataclass(frozen=True)
class NoOptions:
    """The method has no options."""


@register_method("grad-rollout", NoOptions, summary="rollout of gradient-weighted attention `mean_h(∇A⊙A)⁺`",
                 cost="1 forward + 1 backward (unfused attention)", class_specific=True,
                 paper="Chefer, Gur & Wolf, ICCV 2021 (weighting), https://arxiv.org/abs/2103.15679")
def _grad_rollout(model: nn.Module, images: torch.Tensor, target: Any, opts: NoOptions) -> MethodOutput:
    """Gradient-weighted rollout: ``Ā_l = mean_h (∇A_l ⊙ A_l)⁺``, ``Â_l = 0.5·Ā_l + 0.5·I`` rows
    renormalised, ``R = Â_L···Â_1``, map ``R[cls, prefix:]`` renormalised.

    :func:`~vitlens.analysis.gradients.grad_rollout_map`; Swin: the window-aware rollout
    on the weighted windows (:func:`~vitlens.analysis.gradients.grad_rollout`).
    """
    maps, logits, layout = grad_rollout(model, images, target)
    return MethodOutput(maps, logits, layout, {})


@register_method("chefer", NoOptions, summary="relevance `R += Ā·R` with `Ā = mean_h(∇A⊙A)⁺`",
                 cost="1 forward + 1 backward (unfused attention)", class_specific=True,
                 families=("VisionTransformer", "BEiT", "EVA"),
                 paper="Chefer, Gur & Wolf, ICCV 2021, https://arxiv.org/abs/2103.15679")
def _chefer(model: nn.Module, images: torch.Tensor, target: Any, opts: NoOptions) -> MethodOutput:
    """Chefer, Gur & Wolf 2021 (eqs. 5-6): ``R = I; R = R + Ā_l·R`` for each layer from the first, map ``R[cls, prefix:]``.

    :func:`~vitlens.analysis.gradients.chefer_map`. Needs token-level attention: windowed
    models (Swin) are refused.
    """
    logits, _tgt, layout, attns, grads = attention_gradients(model, images, target)
    return MethodOutput(chefer_map(attns, grads, layout), logits, layout, {})


@dataclass(frozen=True)
class LrpOptions:
    """Options of ``attnlrp`` and ``cp-lrp``."""

    gamma: float = 0.0        #: γ of the generalised γ-rule on every Linear (0 = the ε-rule, ε → 0)
    conv_gamma: float = 0.0   #: γ on the patch-embedding convolution
    pixels: bool = False      #: return ``[B, H, W]`` pixel relevance (summed over channels) instead of patches


def _lrp(variant: str):
    def run(model: nn.Module, images: torch.Tensor, target: Any, opts: LrpOptions) -> MethodOutput:
        if not isinstance(opts.pixels, bool):
            raise TypeError(f"pixels must be True or False, got {opts.pixels!r}")
        rel, logits, _tgt, layout, _ = lrp_relevance(model, images, target, variant=variant, gamma=opts.gamma,
                                                    conv_gamma=opts.conv_gamma)
        maps = reduce_pixels(rel, "sum") if opts.pixels else pool_to_patches(rel, layout, "sum")
        return MethodOutput(maps, logits, layout, {})
    return run


_ATTNLRP = _lrp("attnlrp")
_ATTNLRP.__doc__ = """AttnLRP (Achtibat et al., ICML 2024): relevance of the target logit by the paper's rules, as one backward pass.

``R(x) = x ⊙ ∂̃y_t/∂x`` with the modified gradients of :mod:`vitlens.analysis.lrp`:
linear layers ε-rule (γ-rule with ``gamma > 0``), LayerNorm with σ constant,
elementwise non-linearities the identity rule, softmax ``R_i = x_i (R_i − s_i Σ_j R_j)`` (Prop. 3.1),
``q·kᵀ`` and ``A·v`` (and any product of activations) the uniform rule. The patch map is
the signed sum of the pixel relevance over each patch (``pixels=True``: per pixel,
summed over channels).
"""
_CPLRP = _lrp("cp-lrp")
_CPLRP.__doc__ = """CP-LRP (Ali et al., ICML 2022): LRP with the attention probabilities treated as constants.

The rules of ``attnlrp`` except that the softmax output is detached, so relevance
flows through ``v`` only (``A·v`` is then linear in v); q and k get none. Exactly
conservative on a bias-free model (``docs/methods.md``).
"""
register_method("attnlrp", LrpOptions, summary="AttnLRP relevance (pixel relevance pooled to patches)",
                cost="1 forward + 1 backward to the input (unfused attention, rules in the backward)", class_specific=True,
                paper="Achtibat et al., ICML 2024, https://arxiv.org/abs/2402.05602")(_ATTNLRP)
register_method("cp-lrp", LrpOptions, summary="CP-LRP relevance: attention held constant",
                cost="1 forward + 1 backward to the input (unfused attention, rules in the backward)", class_specific=True,
                paper="Ali et al., ICML 2022, https://arxiv.org/abs/2202.07304")(_CPLRP)


@dataclass(frozen=True)
class IgOptions:
    """Options of ``ig``."""

    baselines: float | torch.Tensor | None = None  #: None = 0 (the dataset-mean image), a number, or a tensor
    n_steps: int = 32                               #: integration points
    integration: str = "gausslegendre"              #: captum's integration method
    internal_batch_size: int | None = None          #: inputs per forward; None = max(B, 32)
    pool: str = "sum"                               #: "sum" (signed) or "abs" per patch
    pixels: bool = False                            #: return ``[B, H, W]`` instead of patches


@register_method("ig", IgOptions, summary="Integrated Gradients (captum), pooled to patches",
                 cost="1 forward + B·n_steps inputs forward and backward, internal_batch_size per pass (None: max(B, 32))", class_specific=True,
                 paper="Sundararajan, Taly & Yan, ICML 2017, https://arxiv.org/abs/1703.01365")
def _ig(model: nn.Module, images: torch.Tensor, target: Any, opts: IgOptions) -> MethodOutput:
    """Integrated Gradients ``(x − x')·∫ ∂y_t(x' + α(x − x'))/∂x dα`` (captum), per patch the signed sum.

    :func:`~vitlens.analysis.gradients.integrated_gradients` and
    :func:`~vitlens.analysis.gradients.pool_to_patches`.
    """
    _check_pool(opts.pool)
    logits, layout = _light_forward(model, images)
    attr = integrated_gradients(model, images, resolve_target(target, logits), baselines=opts.baselines,
                                n_steps=opts.n_steps, integration=opts.integration,
                                internal_batch_size=opts.internal_batch_size)
    maps = reduce_pixels(attr, opts.pool) if opts.pixels else pool_to_patches(attr, layout, opts.pool)
    return MethodOutput(maps, logits, layout, {})


@dataclass(frozen=True)
class PixelOptions:
    """Options of ``input-x-gradient``."""

    pool: str = "sum"       #: "sum" (signed) or "abs" per patch
    pixels: bool = False    #: return ``[B, H, W]`` instead of patches


@register_method("input-x-gradient", PixelOptions, summary="input ⊙ gradient (captum), pooled to patches",
                 cost="2 forwards + 1 backward", class_specific=True,
                 paper="Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713")
def _input_x_gradient(model: nn.Module, images: torch.Tensor, target: Any, opts: PixelOptions) -> MethodOutput:
    """Input ⊙ gradient ``x ⊙ ∂y_t/∂x`` (captum's InputXGradient), per patch the signed sum."""
    _check_pool(opts.pool)
    logits, layout = _light_forward(model, images)
    attr = input_x_gradient(model, images, resolve_target(target, logits))
    maps = reduce_pixels(attr, opts.pool) if opts.pixels else pool_to_patches(attr, layout, opts.pool)
    return MethodOutput(maps, logits, layout, {})


@dataclass(frozen=True)
class GradcamOptions:
    """Options of ``gradcam``."""

    layer: int = -1      #: block (Swin: stage) whose input tokens are used; negative counts from the end
    relu: bool = True    #: apply Grad-CAM's ReLU


@register_method("gradcam", GradcamOptions, summary="Grad-CAM (captum) on the patch tokens into a block",
                 cost="2 forwards + 1 backward", class_specific=True,
                 paper="Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391")
def _gradcam(model: nn.Module, images: torch.Tensor, target: Any, opts: GradcamOptions) -> MethodOutput:
    """Grad-CAM ``ReLU(Σ_k α_k F_k)``, ``α_k = mean_{r,c} ∂y_t/∂F_k[r, c]`` on the tokens entering block ``layer``.

    :func:`~vitlens.analysis.gradients.gradcam` (Swin: stage ``layer``'s output).
    """
    logits, layout = _light_forward(model, images)
    maps = gradcam(model, images, resolve_target(target, logits), layout, layer=opts.layer, relu=opts.relu)
    return MethodOutput(maps, logits, layout, {"layer": opts.layer % len(gradcam_modules(model)[0])})


@dataclass(frozen=True)
class RandomOptions:
    """Options of ``random``."""

    seed: int = 0    #: seed of ``torch.Generator``


@register_method("random", RandomOptions, summary="seeded uniform noise: the baseline every metric reports",
                 cost="1 forward", class_specific=False)
def _random(model: nn.Module, images: torch.Tensor, target: Any, opts: RandomOptions) -> MethodOutput:
    """``U[0, 1)`` per patch from ``torch.Generator().manual_seed(seed)``: the same for the same seed and batch shape."""
    if isinstance(opts.seed, bool) or not isinstance(opts.seed, int):
        raise TypeError(f"seed must be an int, got {type(opts.seed).__name__} {opts.seed!r}")
    logits, layout = _light_forward(model, images)
    gen = torch.Generator().manual_seed(opts.seed)
    maps = torch.rand(images.shape[0], *layout.grid_size, generator=gen).to(images.device)
    return MethodOutput(maps, logits, layout, {})

# ------------------------------------------------------------------------------- API
@overload
def explain(model: nn.Module, images: torch.Tensor, method: str = ...,
            target: int | Sequence[int] | torch.Tensor | None = ..., *, details: Literal[False] = ...,
            **options: Any) -> torch.Tensor: ...
@overload
def explain(model: nn.Module, images: torch.Tensor, method: str = ...,
            target: int | Sequence[int] | torch.Tensor | None = ..., *, details: Literal[True],
            **options: Any) -> Explanation: ...


def explain(model: nn.Module, images: torch.Tensor, method: str = "rollout",
            target: int | Sequence[int] | torch.Tensor | None = None, *, details: bool = False,
            **options: Any) -> torch.Tensor | Explanation:
    """A patch map per image, by any registered method, behind one interface.

    Every method gives ``[B, gh, gw]`` float32 maps on the patch grid of the model's
    :class:`~vitlens.TokenLayout` (a larger value = more important). The model runs on
    the whole batch at once and is left exactly as it was: its training/eval mode,
    parameters' ``requires_grad`` and ``.grad``, hooks and attention flags are restored
    after success and after an exception (it runs in eval mode meanwhile).

    The methods, their options (typed dataclasses with defaults), cost and supported
    families are listed by ``vitlens.methods()``; each method's ``doc`` has its formula
    and paper, and ``docs/methods.md`` has the table generated from the registry:
    ``cls``, ``rollout``, ``grad-rollout``, ``chefer``, ``attnlrp``, ``cp-lrp``, ``ig``,
    ``input-x-gradient``, ``gradcam``, ``random``.

    Args:
        model: a supported timm model (``vitlens.supported_families()``).
        images: ``[B, 3, H, W]`` preprocessed batch on the model's device.
        method: a registered method name (``vitlens.methods()``).
        target: the class each map explains: None = the predicted class (argmax of
            the logits), an int for every image, or a sequence / tensor of B ints.
            Class-agnostic methods (``cls``, ``rollout``, ``random``) check it and
            otherwise ignore it.
        details: return an :class:`Explanation` (maps, logits, target, layout, method,
            options) instead of the maps alone.
        **options: the method's options (its options dataclass); unknown ones raise TypeError.

    Returns:
        ``[B, gh, gw]`` float32 on the images' device (``[B, H, W]`` for ``pixels=True``,
        ``[B, heads, gh, gw]`` for ``cls`` with ``head=None``); an :class:`Explanation`
        with ``details=True``.

    Raises:
        ValueError: unknown method (with a close-match suggestion), target out of
            range, or a method the model cannot support (``cls`` without CLS token;
            ``chefer`` on windowed models such as Swin, which needs token-level
            attention: :class:`~vitlens.UnsupportedModelError`).
        UnsupportedModelError: a model whose forward returns tokens, not class logits (a
            multimodal tower's encoder, ``*_enc``), for every method.
        TypeError: unknown option, or a target that is not integer.
    """
    spec = get_method(method)
    opts = spec.make_options(options)
    _check_images(images)
    require_logits(model)  # every method returns the logits: a model returning tokens is refused here
    with preserved_model_state(model):
        out = spec.run(model, images, target, opts)
        logits = out.logits.detach()
        tgt = resolve_target(target, logits)
    maps = out.maps.detach().float()
    if not details:
        return maps
    return Explanation(maps, logits, tgt, out.layout, spec.name, {**asdict(opts), **out.resolved})


def explanation(model: nn.Module, images: torch.Tensor, method: str = "rollout",
                target: int | Sequence[int] | torch.Tensor | None = None, **options: Any) -> Explanation:
    """Deprecated: use ``vitlens.explain(..., details=True)``, which returns the same :class:`Explanation`."""
    warnings.warn("vitlens.explanation(...) is deprecated and will be removed in the next release; "
                  "use vitlens.explain(..., details=True)", DeprecationWarning, stacklevel=2)
    return explain(model, images, method, target, details=True, **options)
