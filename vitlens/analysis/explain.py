"""One entry point for every patch map: ``vitlens.explain(model, images, method=..., target=...)``.

Methods (``docs/methods.md`` has the formulas, papers, and when to believe each):

==================== ========================================================= ==============
method               what                                                      class-specific
==================== ========================================================= ==============
``cls``              CLS-token attention of one layer (DESIGN.md §4)           no
``rollout``          attention rollout, Abnar & Zuidema 2020 (DESIGN.md §4)    no
``grad-rollout``     rollout of gradient-weighted attention ``mean_h(∇A⊙A)⁺``  yes
``chefer``           Chefer, Gur & Wolf 2021 relevance ``R += Ā·R``            yes
``ig``               Integrated Gradients (captum), pooled to patches          yes
``input-x-gradient`` input ⊙ gradient (captum), pooled to patches              yes
``gradcam``          Grad-CAM (captum) on the patch tokens into a block        yes
``random``           seeded uniform noise: the baseline every metric reports   no
==================== ========================================================= ==============
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from .._util import maps_html, maps_repr
from ..capture import TokenLayout, adapter_for, capture
from .cls_attention import HEAD_FUSIONS, cls_attention
from .gradients import (POOLINGS, attention_gradients, chefer_map, grad_rollout, gradcam, gradcam_modules,
                        input_x_gradient, integrated_gradients, pool_to_patches, preserved_model_state,
                        reduce_pixels, resolve_target)
from .rollout import rollout

#: Every method :func:`explain` knows, in the order the docs present them.
METHODS: tuple[str, ...] = ("cls", "rollout", "grad-rollout", "chefer", "ig", "input-x-gradient", "gradcam",
                            "random")

#: Options each method accepts, with their defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "cls": {"layer": -1, "head": "mean"},
    "rollout": {"head": "mean", "discard_ratio": 0.0},
    "grad-rollout": {},
    "chefer": {},
    "ig": {"baselines": None, "n_steps": 32, "integration": "gausslegendre", "internal_batch_size": None,
           "pool": "sum", "pixels": False},
    "input-x-gradient": {"pool": "sum", "pixels": False},
    "gradcam": {"layer": -1, "relu": True},
    "random": {"seed": 0},
}

#: Methods whose map does not depend on the target class (``target`` only labels the result).
CLASS_AGNOSTIC: tuple[str, ...] = ("cls", "rollout", "random")


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
    """Return ``method`` if :func:`explain` knows it, else raise ValueError listing the methods."""
    if isinstance(method, str) and method in METHODS:
        return method
    hint = ""
    if isinstance(method, str):
        close = difflib.get_close_matches(method.lower().replace("_", "-"), METHODS, n=2, cutoff=0.5)
        hint = f". Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown explanation method {method!r}; known methods: {', '.join(METHODS)}{hint}")


def _options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    allowed = OPTIONS[method]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(allowed) if allowed else "none"
        raise TypeError(f"method {method!r} got unknown option(s) {', '.join(unknown)}; "
                        f"its options are: {names}")
    return {**allowed, **given}


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
        logits = model(images)
    assert cache.layout is not None
    return logits, cache.layout


def _cls(model, images, target, layer, head):
    rows = "prefix" if adapter_for(model).num_prefix_tokens else "all"
    with torch.no_grad(), capture(model, layers=[layer], rows=rows) as cache:
        logits = model(images)
    maps = cls_attention(cache, layer=layer, head=head)
    assert cache.layout is not None
    return maps, logits, cache.layout, {"layer": cache.layers[0], "head": head}


def _rollout(model, images, target, head, discard_ratio):
    if head not in HEAD_FUSIONS:
        raise ValueError(f"rollout fuses heads by one of {HEAD_FUSIONS}, got head={head!r}; "
                         f"per-head maps exist only for method 'cls'")
    with torch.no_grad(), capture(model) as cache:
        logits = model(images)
    maps = rollout(cache, head=str(head), discard_ratio=discard_ratio)
    assert cache.layout is not None
    return maps, logits, cache.layout, {"head": head, "discard_ratio": discard_ratio}


def _random(model, images, target, seed):
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    logits, layout = _light_forward(model, images)
    gen = torch.Generator().manual_seed(seed)
    maps = torch.rand(images.shape[0], *layout.grid_size, generator=gen).to(images.device)
    return maps, logits, layout, {"seed": seed}


def _grad_rollout(model, images, target):
    maps, logits, layout = grad_rollout(model, images, target)
    return maps, logits, layout, {}


def _chefer(model, images, target):
    logits, _tgt, layout, attns, grads = attention_gradients(model, images, target)
    return chefer_map(attns, grads, layout), logits, layout, {}


def _pixel_method(attribute):
    def run(model, images, target, pool, pixels, **kw):
        if pool not in POOLINGS:
            raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
        logits, layout = _light_forward(model, images)
        attr = attribute(model, images, resolve_target(target, logits), **kw)
        maps = reduce_pixels(attr, pool) if pixels else pool_to_patches(attr, layout, pool)
        return maps, logits, layout, {}
    return run


def _gradcam(model, images, target, layer, relu):
    logits, layout = _light_forward(model, images)
    maps = gradcam(model, images, resolve_target(target, logits), layout, layer=layer, relu=relu)
    return maps, logits, layout, {"layer": layer % len(gradcam_modules(model)[0])}


_IMPL: dict[str, Callable[..., tuple]] = {
    "cls": _cls, "rollout": _rollout, "random": _random,
    "grad-rollout": _grad_rollout,
    "chefer": _chefer,
    "ig": _pixel_method(integrated_gradients),
    "input-x-gradient": _pixel_method(input_x_gradient),
    "gradcam": _gradcam,
}


# ------------------------------------------------------------------------------- API
def explanation(model: nn.Module, images: torch.Tensor, method: str = "rollout",
                target: int | Sequence[int] | torch.Tensor | None = None, **options: Any) -> Explanation:
    """Like :func:`explain`, but returns an :class:`Explanation` with the logits, targets and layout."""
    method = check_method(method)
    opts = _options(method, options)
    _check_images(images)
    with preserved_model_state(model):
        maps, logits, layout, used = _IMPL[method](model, images, target, **opts)
        logits = logits.detach()
        tgt = resolve_target(target, logits)
    return Explanation(maps.detach().float(), logits, tgt, layout, method, {**opts, **used})


def explain(model: nn.Module, images: torch.Tensor, method: str = "rollout",
            target: int | Sequence[int] | torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """A patch map per image, by any method, behind one interface.

    Every method gives ``[B, gh, gw]`` float32 maps on the patch grid of the model's
    :class:`~vitlens.TokenLayout` (a larger value = more important). The model runs on
    the whole batch at once and is left exactly as it was: its training/eval mode,
    parameters' ``requires_grad`` and ``.grad``, hooks and attention flags are restored
    after success and after an exception (it runs in eval mode meanwhile).

    Methods and their options (defaults in :data:`OPTIONS`; formulas in each function
    and ``docs/methods.md``):

    - ``"cls"``: CLS attention of one layer, ``A_l[:, cls, prefix:]`` fused over heads
      (:func:`vitlens.cls_attention`). Options ``layer=-1``, ``head="mean"`` (``"max"``,
      ``"min"``, a head index, or None for ``[B, heads, gh, gw]``). Needs a CLS token.
    - ``"rollout"``: attention rollout (Abnar & Zuidema 2020; :func:`vitlens.rollout`),
      maps sum to 1. Options ``head="mean"`` (fusion), ``discard_ratio=0.0``.
    - ``"grad-rollout"``: rollout of ``Ā_l = mean_h (∇A_l ⊙ A_l)⁺`` with ``0.5·Ā + 0.5·I``,
      rows renormalised, ``R = Â_L···Â_1``, map ``R[cls, prefix:]`` renormalised
      (:func:`~vitlens.analysis.gradients.grad_rollout_map`); Swin: the window-aware
      rollout on the weighted windows (:func:`~vitlens.analysis.gradients.grad_rollout`).
      No options.
    - ``"chefer"``: ``R = I; R = R + Ā_l·R`` for each layer from the first, map
      ``R[cls, prefix:]`` (Chefer, Gur & Wolf, ICCV 2021;
      :func:`~vitlens.analysis.gradients.chefer_map`). No options.
    - ``"ig"``: captum Integrated Gradients, per patch the signed sum of the pixel
      attributions (``pool="abs"``: sum of ``|a|``; ``pixels=True``: ``[B, H, W]``, summed
      over channels only). Options ``baselines=None`` (0 = the mean image),
      ``n_steps=32``, ``integration="gausslegendre"``, ``internal_batch_size=None`` (inputs per forward; None = ``max(B, 32)``),
      ``pool="sum"``, ``pixels=False``.
    - ``"input-x-gradient"``: captum InputXGradient, pooled like ``ig``. Options
      ``pool="sum"``, ``pixels=False``.
    - ``"gradcam"``: captum LayerGradCam on the patch tokens entering block ``layer``'s
      attention, as a ``[B, D, gh, gw]`` map (Swin: stage ``layer``'s output, placed on
      the first stage's grid). Options ``layer=-1``, ``relu=True``.
    - ``"random"``: ``U[0, 1)`` noise per patch from ``torch.Generator().manual_seed(seed)``,
      the same for the same seed and batch shape; the floor every metric should beat.
      Option ``seed=0``.

    Args:
        model: a supported timm model (``vitlens.supported_families()``).
        images: ``[B, 3, H, W]`` preprocessed batch on the model's device.
        method: one of :data:`METHODS`.
        target: the class each map explains: None = the predicted class (argmax of
            the logits), an int for every image, or a sequence / tensor of B ints.
            Class-agnostic methods (``cls``, ``rollout``, ``random``) check it and
            otherwise ignore it.
        **options: the method's options (see above); unknown ones raise TypeError.

    Returns:
        ``[B, gh, gw]`` float32 on the images' device (``[B, H, W]`` for ``pixels=True``,
        ``[B, heads, gh, gw]`` for ``cls`` with ``head=None``).

    Raises:
        ValueError: unknown method (with a close-match suggestion), target out of
            range, or a method the model cannot support (``cls`` without CLS token;
            ``chefer`` on windowed models such as Swin, which needs token-level
            attention: :class:`~vitlens.UnsupportedModelError`).
        TypeError: unknown option, or a target that is not integer.
    """
    return explanation(model, images, method, target, **options).maps
