"""Gradient-based explanations of timm ViTs: the building blocks behind :func:`vitlens.explain`.

Everything here runs the model; the functions that do leave it exactly as they found it
(:func:`preserved_model_state`). Users normally call :func:`vitlens.explain`, which picks
the method by name; these functions are public for those who want the pieces.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .._util import resolve_index
from ..capture import AttentionCache, TokenLayout, capture, classifier, logits_of
from ..errors import UnsupportedModelError
from .rollout import rollout


@contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode for the block, then restore everything the block may touch.

    Restored on exit, after success and after an exception: every module's ``training``
    flag, every parameter's ``requires_grad`` flag and its ``.grad`` (the very tensor
    object that was there, ``None`` included). Hooks are the business of the code that
    installs them (:func:`vitlens.capture` and this module remove theirs in ``finally``).

    Explanations are computed in eval mode (no dropout, no stochastic depth): a model
    passed in training mode is switched to eval for the block and back afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training
        for p, req, grad in params:
            if p.requires_grad != req:
                p.requires_grad_(req)
            if p.grad is not grad:
                p.grad = grad


# ------------------------------------------------------------------------ targets
def resolve_target(target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The class index per image: ``argmax(logits)`` for None, an int for every image, or one per image.

    Args:
        target: None, an int, or a sequence / 1-D tensor of ``B`` ints.
        logits: ``[B, C]`` model outputs.

    Returns:
        ``[B]`` long tensor on ``logits``' device.

    Raises:
        TypeError: not integer class indices.
        ValueError: wrong count, or a class outside ``0..C-1``.
    """
    B, C = logits.shape
    if target is None:
        return logits.detach().argmax(dim=-1)
    if isinstance(target, bool):
        raise TypeError(f"target must be a class index (int) or one per image, got {target!r}")
    if isinstance(target, int):
        t = torch.full((B,), target, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"target must be None, an int, or a sequence/tensor of {B} ints, "
                            f"got {type(target).__name__}") from None
        if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"target must give one class per image: {B} images, got shape {tuple(t.shape)}")
        t = t.long()
    bad = (t < 0) | (t >= C)
    if bool(bad.any()):
        raise ValueError(f"target class {int(t[bad][0])} is out of range: the model has {C} classes "
                         f"(valid targets 0..{C - 1})")
    return t.to(logits.device)


def _grad_mode():
    """Gradients on, also when the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()``."""
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def _fresh_input(images: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` that is a normal (non-inference) leaf requiring grad.

    The graph then starts at the input, so gradients reach the attention even when no
    parameter requires grad, and ``torch.autograd.grad`` (never ``.backward``) leaves
    every parameter's ``.grad`` alone.
    """
    return images.detach().clone().requires_grad_(True)


# ------------------------------------------------------------ attention gradients
def attention_gradients(model: nn.Module, images: torch.Tensor,
                        target: int | Sequence[int] | torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, TokenLayout, list[torch.Tensor], list[torch.Tensor]]:
    """Attention probabilities of every layer and the target logit's gradient with respect to them.

    One forward and one backward for the whole batch, inside
    ``vitlens.capture(model, grad=True)``: ``A_l`` is the very tensor the model multiplies
    with v (timm's unfused path), and ``∇A_l = ∂ y_t / ∂ A_l`` with ``y_t`` the target
    logit of each image. Images do not interact in a ViT forward, so the gradient of
    ``Σ_b y_{b, t_b}`` with respect to image b's attention is ``∂ y_{b, t_b} / ∂ A_l[b]``.

    Args:
        model: a supported flat (token-level) model; windowed models (Swin) raise.
        images: ``[B, 3, H, W]`` preprocessed batch.
        target: see :func:`resolve_target`.

    Returns:
        ``(logits [B, C], target [B], layout, [A_l], [∇A_l])`` with ``A_l, ∇A_l``
        ``[B, heads, T, T]`` detached, layers in forward order.
    """
    logits, tgt, cache, attns, grads = _attention_and_gradients(model, images, target)
    if cache.windowed:
        raise UnsupportedModelError(
            f"this method needs token-level (non-windowed) attention over the whole image; "
            f"{cache.model_name} ({cache.family}) attends inside shifted windows. Use method "
            f"'grad-rollout' or 'rollout' (window-aware), 'gradcam', 'ig', 'input-x-gradient' or 'random' "
            f"for this model")
    assert cache.layout is not None
    return logits, tgt, cache.layout, attns, grads


def _attention_and_gradients(model: nn.Module, images: torch.Tensor,
                             target: int | Sequence[int] | torch.Tensor | None):
    """:func:`attention_gradients` for flat and windowed models; also returns the cache (geometry)."""
    with preserved_model_state(model), _grad_mode():
        x = _fresh_input(images)
        with capture(model, grad=True) as cache:
            logits = logits_of(model, model(x))
        tgt = resolve_target(target, logits)
        attns = [cache.attention(layer) for layer in cache.layers]
        score = logits.gather(1, tgt[:, None]).sum()
        grads = torch.autograd.grad(score, attns)
    return logits.detach(), tgt, cache, [a.detach() for a in attns], [g.detach() for g in grads]


def grad_rollout(model: nn.Module, images: torch.Tensor,
                 target: int | Sequence[int] | torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, TokenLayout]:
    """Gradient-weighted attention rollout of a batch: ``(maps [B, gh, gw], logits, layout)``.

    Flat models: :func:`grad_rollout_map`. Windowed models (Swin, SwinV2): the same
    weighting per window, ``Ā_l = mean_h (∇A_l ⊙ A_l)⁺`` on the recorded
    ``[B, nW, heads, n, n]`` tensors, then exactly the window-aware recursion of
    :func:`vitlens.rollout` (within each stage in stage coordinates, patch merging by
    averaging the merged tokens, the map the mean over the pooled output tokens;
    DESIGN.md §4, ``docs/swin.md``), so Swin's grad-rollout and rollout differ only in
    the weighting.
    """
    logits, _tgt, cache, attns, grads = _attention_and_gradients(model, images, target)
    assert cache.layout is not None
    if not cache.windowed:
        return grad_rollout_map(attns, grads, cache.layout), logits, cache.layout
    weighted = AttentionCache(model_name=cache.model_name, family=cache.family, num_layers=cache.num_layers,
                              num_heads=1, layers=list(cache.layers), heads=(0,), rows="all",
                              hook_points=dict(cache.hook_points))
    weighted._set_layout(cache.layout)
    for layer, a, g in zip(cache.layers, attns, grads, strict=True):
        weighted._set_layout(cache.layout_of(layer))
        # [B, nW, heads, n, n] -> one fused "head": mean_h (∇A ⊙ A)⁺
        weighted._record(layer, (g.float() * a.float()).clamp_min(0).mean(dim=2, keepdim=True))
    return rollout(weighted, head="mean"), logits, cache.layout


def weighted_attention(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``Ā = mean_h (∇A ⊙ A)⁺``: gradient-weighted attention, positive part per head, then the head mean.

    Chefer, Gur & Wolf 2021, eq. 5 (https://arxiv.org/abs/2103.15679). The clamp comes
    before the head mean: a head whose contribution is negative cannot cancel another
    head's positive one.

    Args:
        attn, grad: ``[B, heads, T, T]``.

    Returns:
        ``[B, T, T]`` float32.
    """
    return (grad.float() * attn.float()).clamp_min(0).mean(dim=1)


def _relevance_map(R: torch.Tensor, layout: TokenLayout, renormalize: bool) -> torch.Tensor:
    P, cls = layout.num_prefix_tokens, layout.cls_index
    m = R[:, cls, P:] if cls is not None else R[:, P:, P:].mean(dim=1)
    if renormalize:
        m = m / m.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
    return m.reshape(m.shape[0], *layout.grid_size)


def grad_rollout_map(attns: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
    """Gradient-weighted attention rollout.

    Per layer ``l`` (forward order), with ``∇A_l`` the gradient of the target logit with
    respect to the attention probabilities ``A_l`` of *the same* layer::

        Ā_l = mean_h (∇A_l ⊙ A_l)⁺                  (clamp per head, then mean)
        Â_l = 0.5·Ā_l + 0.5·I,  rows renormalised to sum 1
        R   = Â_L ··· Â_1                           (multiplied from the first layer up)

    The map is ``R[cls, prefix:]`` renormalised to sum 1 (no CLS: the mean of R's patch
    rows), i.e. attention rollout (Abnar & Zuidema 2020, DESIGN.md §4) on the
    gradient-weighted attention of Chefer et al. 2021 (https://arxiv.org/abs/2103.15679).

    What jacobgil/vit-explain's ``grad_rollout`` computes instead, and why this differs:

    - normalisation axis: it divides by ``a.sum(dim=-1)`` without ``keepdim``, so entry
      ``[i, j]`` is divided by the sum of *row j* (broadcasting along the last axis):
      the rows are not stochastic, and tokens are rescaled by unrelated row sums. Here
      each row ``i`` is divided by its own sum.
    - gradient order: its backward hooks append gradients as autograd visits the
      layers, last layer first, then ``zip`` them with the attentions in forward order,
      so layer 1's attention is weighted with layer L's gradient. Here ``∇A_l`` pairs
      with ``A_l`` by construction (``torch.autograd.grad`` on the recorded list).
    - head fusion: it clamps after the head mean, ``(mean_h ∇A ⊙ A)⁺``, so heads cancel;
      here ``mean_h (∇A ⊙ A)⁺`` as Chefer et al. define it.
    - also: its discard step only touches image 0, and its hook on ``attn_drop`` sees
      nothing when timm's fused attention is on; here the batch is handled whole and the
      probabilities are recorded on the unfused path.

    Args:
        attns, grads: per layer ``[B, heads, T, T]``, from :func:`attention_gradients`.
        layout: their :class:`~vitlens.TokenLayout`.

    Returns:
        ``[B, gh, gw]`` float32, each map summing to 1 (all zeros if no patch has
        positive relevance).
    """
    R = None
    for a, g in zip(attns, grads, strict=True):
        w = weighted_attention(a, g)
        eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
        w = 0.5 * w + 0.5 * eye
        w = w / w.sum(dim=-1, keepdim=True)
        R = w if R is None else w @ R
    assert R is not None
    return _relevance_map(R, layout, renormalize=True)


def chefer_map(attns: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
    """Relevance propagation of Chefer, Gur & Wolf 2021 for self-attention.

    "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV 2021, https://arxiv.org/abs/2103.15679, eqs. 5-6
    (the self-attention case)::

        R = I                                       (T x T, every token relevant to itself)
        for l = 1 .. L:  R = R + Ā_l · R,   Ā_l = mean_h (∇A_l ⊙ A_l)⁺

    The map is ``R[cls, prefix:]``, not renormalised (its scale is the accumulated
    relevance); a model without CLS token uses the mean of R's patch rows.

    Args:
        attns, grads: per layer ``[B, heads, T, T]``, from :func:`attention_gradients`.
        layout: their :class:`~vitlens.TokenLayout`.

    Returns:
        ``[B, gh, gw]`` float32, non-negative.
    """
    R = None
    for a, g in zip(attns, grads, strict=True):
        w = weighted_attention(a, g)
        if R is None:
            R = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device).expand_as(w)
        R = R + w @ R
    assert R is not None
    return _relevance_map(R, layout, renormalize=False)


# ------------------------------------------------------------- pixel attributions
#: How pixel attributions become one value per pixel / patch.
POOLINGS = ("sum", "abs")


def reduce_pixels(attr: torch.Tensor, pool: str = "sum") -> torch.Tensor:
    """``[B, C, H, W]`` attributions -> ``[B, H, W]``: signed sum over channels (``"sum"``) or sum of ``|a|``."""
    if pool == "sum":
        return attr.float().sum(dim=1)
    if pool == "abs":
        return attr.float().abs().sum(dim=1)
    raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")


def pool_to_patches(attr: torch.Tensor, layout: TokenLayout, pool: str = "sum") -> torch.Tensor:
    """Pixel attributions summed over each patch of the token grid.

    ``map[b, r, c] = Σ_{ch, y, x ∈ patch (r, c)} a[b, ch, y, x]`` (``pool="sum"``), or of
    ``|a|`` (``pool="abs"``). Patch ``(r, c)`` covers rows ``r·ph .. (r+1)·ph`` and columns
    ``c·pw .. (c+1)·pw`` of the input; pixels beyond the grid (cut off by the patch
    embedding) are dropped, and pixels the model padded count 0.

    The signed sum is the default because it keeps the attribution's meaning: for
    Integrated Gradients the patch values add up to ``f(x) - f(baseline)``
    (completeness), so a patch's value is its net contribution to the target logit,
    and positive evidence ranks first, which is what deletion/insertion metrics remove.
    ``"abs"`` measures sensitivity regardless of direction (patches that argue against
    the class rank high too).

    Args:
        attr: ``[B, C, H, W]`` or channel-reduced ``[B, H, W]``.
        layout: the model's token layout for this input.
        pool: ``"sum"`` (signed) or ``"abs"``.

    Returns:
        ``[B, gh, gw]`` float32.
    """
    if pool not in POOLINGS:
        raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
    a = reduce_pixels(attr, pool) if attr.dim() == 4 else (attr.float() if pool == "sum" else attr.float().abs())
    (gh, gw), (ph, pw) = layout.grid_size, layout.patch_size
    H, W = gh * ph, gw * pw
    a = a[:, :H, :W]
    if a.shape[-2:] != (H, W):  # the model padded the input up to whole patches
        a = torch.nn.functional.pad(a, (0, W - a.shape[-1], 0, H - a.shape[-2]))
    return a.reshape(a.shape[0], gh, ph, gw, pw).sum(dim=(2, 4))


def integrated_gradients(model: nn.Module, images: torch.Tensor, target: torch.Tensor, *,
                         baselines: float | torch.Tensor | None = None, n_steps: int = 32,
                         integration: str = "gausslegendre", internal_batch_size: int | None = None
                         ) -> torch.Tensor:
    """Integrated Gradients (Sundararajan, Taly & Yan 2017, https://arxiv.org/abs/1703.01365) via captum.

    ``IG_i(x) = (x_i - x'_i) · ∫_0^1 ∂ y_t(x' + α (x - x')) / ∂ x_i dα``, the integral by
    captum's ``IntegratedGradients`` with ``n_steps`` points of ``integration``
    (``"gausslegendre"``, ``"riemann_left"``/``"riemann_right"``/``"riemann_middle"``/
    ``"riemann_trapezoid"``). The baseline ``x'`` defaults to 0 in the model's
    normalised input space, i.e. the dataset-mean colour image.

    Args:
        model: any image classifier.
        images: ``[B, 3, H, W]`` preprocessed batch.
        target: ``[B]`` class per image.
        baselines: None (zeros), a number, or a tensor broadcastable to ``images``.
        n_steps: integration points (captum evaluates ``B · n_steps`` inputs).
        integration: captum's ``method``.
        internal_batch_size: model inputs per forward pass (captum's option); None =
            ``max(B, 32)``, so memory stays near that of a batch of ``max(B, 32)``
            images instead of ``B · n_steps``.

    Returns:
        ``[B, 3, H, W]`` attributions.
    """
    from captum.attr import IntegratedGradients

    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    with preserved_model_state(model), _grad_mode():
        x = _fresh_input(images)
        base = 0.0 if baselines is None else baselines
        if isinstance(base, torch.Tensor):
            base = base.to(device=x.device, dtype=x.dtype).expand_as(x).contiguous()
        return IntegratedGradients(classifier(model)).attribute(
            x, baselines=base, target=target, n_steps=n_steps, method=integration,
            internal_batch_size=internal_batch_size or max(x.shape[0], 32)).detach()


def input_x_gradient(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Input ⊙ gradient (Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713) via captum's ``InputXGradient``.

    ``a_i = x_i · ∂ y_t / ∂ x_i``, in the model's normalised input space.

    Returns:
        ``[B, 3, H, W]`` attributions.
    """
    from captum.attr import InputXGradient

    with preserved_model_state(model), _grad_mode():
        x = _fresh_input(images)
        return InputXGradient(classifier(model)).attribute(x, target=target).detach()


def gradcam_modules(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """The modules whose outputs :func:`gradcam` can use, one per ``layer``, and whether they are NHWC stages.

    Asked of the model's adapter (``adapter.gradcam_points()``): flat ViTs
    ``blocks[i].norm1`` (``[B, T, D]``); Swin / SwinV2 the stages ``layers[s]`` (``[B, H, W, C]``).
    """
    from ..capture import adapter_for

    modules, kind = adapter_for(model).gradcam_modules()
    return modules, kind in ("nhwc", "nlc")


class _TokenGrid(nn.Module):
    """Identity on ``[B, D, gh, gw]``: the module captum's LayerGradCam hooks (channels on dim 1)."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid


def gradcam(model: nn.Module, images: torch.Tensor, target: torch.Tensor, layout: TokenLayout, *,
            layer: int = -1, relu: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) on a ViT's patch tokens, via captum.

    Flat ViTs: features ``F`` are the patch tokens entering block ``layer``'s attention
    (the output of ``blocks[layer].norm1``, prefix tokens dropped), presented to captum's
    ``LayerGradCam`` as a ``[B, D, gh, gw]`` feature map (channels on dim 1), so::

        α_k = mean_{r, c} ∂ y_t / ∂ F_k[r, c]        map = ReLU(Σ_k α_k F_k)

    Why not the block's *output*: in a CLS-pooled ViT the last block's patch outputs
    never reach the logits (only the CLS output does), so their gradient is exactly 0
    and Grad-CAM there is a blank map. The input of the last attention is the last
    place patch tokens still influence the class (the recipe pytorch-grad-cam uses).

    Swin / SwinV2: ``F`` is the output of stage ``layer`` (``layers[layer]``, NHWC, the
    tokens the average-pooled head reads for the last stage), as ``[B, C, H_s, W_s]``;
    the map is placed on the first stage's grid by giving first-stage token ``(y, x)``
    the value of the stage token ``(y // 2^s, x // 2^s)`` that patch merging folded it into.

    The model is not edited: a forward hook on that module routes the tokens through a
    detached :class:`_TokenGrid` module for the one forward, and is removed in ``finally``.

    Args:
        model: a flat timm ViT with ``blocks[i].norm1``, or a Swin / SwinV2.
        images: ``[B, 3, H, W]`` preprocessed batch.
        target: ``[B]`` class per image.
        layout: the model's token layout for these images.
        layer: block index (Swin: stage index), negative counts from the end.
        relu: apply Grad-CAM's ReLU (captum's ``relu_attributions``).

    Returns:
        ``[B, gh, gw]`` float32.
    """
    from captum.attr import LayerGradCam

    view = _TokenGrid()
    P, (gh, gw) = layout.num_prefix_tokens, layout.grid_size
    modules, windowed = gradcam_modules(model)
    n = len(modules)
    layer = resolve_index(layer, n, "stage" if windowed else "layer")   # on Swin, gradcam's layer is a stage

    def route_tokens(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        B, T, D = out.shape
        if T != layout.num_tokens:
            raise UnsupportedModelError(f"blocks[{layer}].norm1 gave {T} tokens, the layout predicts "
                                        f"{layout.num_tokens}; gradcam cannot place them on the grid")
        grid = view(out[:, P:].transpose(1, 2).reshape(B, D, gh, gw))
        return torch.cat([out[:, :P], grid.reshape(B, D, gh * gw).transpose(1, 2)], dim=1)

    def route_nhwc(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        return view(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()

    def route_nlc(_m: nn.Module, _inp: tuple, out: torch.Tensor | tuple) -> torch.Tensor | tuple:
        # stage tokens [B, H_s * W_s, C] row-major (transformers' Swin: the first output of the
        # stage's last block); the stage grid is the adapter's, from its window layouts
        tokens = out[0] if isinstance(out, tuple) else out
        B, N, C = tokens.shape
        hs, ws = stage_grid
        if N != hs * ws:
            raise UnsupportedModelError(f"gradcam stage {layer} gave {N} tokens, the stage grid {stage_grid} "
                                        f"predicts {hs * ws}; gradcam cannot place them on the grid")
        grid = view(tokens.transpose(1, 2).reshape(B, C, hs, ws)).reshape(B, C, N).transpose(1, 2)
        return (grid, *out[1:]) if isinstance(out, tuple) else grid

    kind = "tokens"
    stage_grid = (gh, gw)
    if windowed:
        from ..capture import adapter_for

        desc = adapter_for(model).describe(layout.input_size)
        kind = desc.gradcam_kind
        stage_grid = next(w.grid_size for w in desc.windows if w.stage == layer % n)
    route = {"tokens": route_tokens, "nhwc": route_nhwc, "nlc": route_nlc}[kind]
    with preserved_model_state(model), _grad_mode():
        x = _fresh_input(images)
        handle = modules[layer].register_forward_hook(route)
        try:
            cam = LayerGradCam(classifier(model), view).attribute(x, target=target, relu_attributions=relu)
        finally:
            handle.remove()
    cam = cam.detach().float()[:, 0]
    if windowed:  # stage grid -> first-stage grid: each token takes its merged stage token's value
        s = layer % n
        ys = torch.arange(gh, device=cam.device) >> s
        xs = torch.arange(gw, device=cam.device) >> s
        cam = cam[:, ys][:, :, xs]
    return cam
