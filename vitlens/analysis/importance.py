"""Token importance and token dropping: score patches, then run the ViT on the top-k only.

- :func:`token_importance` scores every patch token of every image, by any
  :func:`vitlens.explain` method or by the attention the token receives
  (:func:`vitlens.attention_received`).
- :func:`keep_tokens` runs a plain timm ViT on the prefix tokens plus the ``keep_ratio``
  highest-scoring patch tokens (position embeddings added before dropping, so every kept
  token keeps its own position; cf. DynamicViT, Rao et al. 2021,
  https://arxiv.org/abs/2106.02034, and EViT, Liang et al. 2022,
  https://arxiv.org/abs/2202.07800).
- :func:`keep_ratio_curve` measures top-1 accuracy against the keep ratio, for a
  scoring method and for a random order (the baseline).

One token-dropping implementation, :func:`forward_kept`, serves :func:`keep_tokens` and
the token-drop faithfulness metrics (``positive_drop`` / ``negative_drop`` in
:func:`vitlens.evaluate`).

Supported models for token dropping: timm ``VisionTransformer`` and its subclasses
(``vit_*``, ``deit_*``, ``deit3_*``, DeiT distilled, DINOv2 incl. registers, CLIP image
towers, FlexiViT, global-average-pool ViTs, the demo model): absolute position
embeddings added by ``_pos_embed`` before the blocks, and a pooling head that reads the
prefix tokens or averages over whatever patch tokens are present. Models whose
attention depends on the full patch grid (Swin's windows, BEiT's relative position
bias, EVA's RoPE) raise :class:`~vitlens.errors.UnsupportedModelError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._util import as_batches, describe, html_table
from ..capture import logits_of
from ..errors import UnsupportedModelError, VitlensError

__all__ = ["token_importance", "keep_tokens", "forward_kept", "keep_ratio_curve", "KeepRatioCurve",
           "count_for", "IMPORTANCE_METHODS", "DEFAULT_KEEP_RATIOS", "check_token_drop_model", "as_batches"]

#: Scoring methods of :func:`token_importance` besides the :func:`vitlens.explain` methods.
IMPORTANCE_METHODS = ("received",)
#: Keep ratios of :func:`keep_ratio_curve` by default: 0.1, 0.2, ..., 1.0.
DEFAULT_KEEP_RATIOS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))


def count_for(fraction: float, n: int) -> int:
    """Number of patches that ``fraction`` of ``n`` stands for: ``floor(fraction * n + 0.5)``.

    The one rounding rule (round half up) used for removal counts (faithfulness metrics)
    and keep counts (:func:`keep_tokens`); e.g. 10% of 64 patches is 6, 90% is 58.
    """
    return int(math.floor(fraction * n + 0.5 + 1e-9))


# ------------------------------------------------------------------------ model checks
def check_token_drop_model(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless the model's adapter supports token dropping.

    See the module docstring for the supported families and why others are refused.
    """
    from ..capture import adapter_for

    from ..capture.adapters import Adapter

    try:
        adapter = adapter_for(model)
        ok, why = adapter.token_drop, adapter.token_drop_reason
    except UnsupportedModelError:
        ok, why = False, Adapter.token_drop_reason
    if not ok:
        raise UnsupportedModelError(
            f"token dropping runs a ViT on a subset of its patch tokens and supports timm VisionTransformer "
            f"models (vit_*, deit_*, deit3_*, DeiT distilled, DINOv2 incl. registers, CLIP, FlexiViT, the "
            f"demo model); got {type(model).__name__}: {why}. Use the pixel "
            f"metrics (deletion, insertion, positive, negative) for this model")


def forward_kept(model: nn.Module, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Run a ViT on its prefix tokens and the patch tokens ``keep`` only.

    The image is patch-embedded and the position embeddings are added (prefix tokens
    included) *before* any token is dropped; the sequence is then
    ``[prefix tokens, x[keep[b, 0]], x[keep[b, 1]], ...]`` (patch tokens in the order
    given; pass sorted indices to keep the original order), and the blocks, final norm
    and head run on it unchanged. With every index in order, the result is bit-identical
    to ``model(images)``. The model-specific steps are the adapter's
    (``adapter_for(model).forward_kept``).

    Args:
        model: a model whose adapter supports token dropping (see :func:`check_token_drop_model`), in eval mode.
        images: ``[B, 3, H, W]`` preprocessed batch.
        keep: ``[B, k]`` long, patch indices (row-major, ``0..N-1``) to keep per image;
            the same ``k`` for every image of the batch.

    Returns:
        ``[B, num_classes]`` logits.
    """
    from ..capture import adapter_for

    check_token_drop_model(model)
    return adapter_for(model).forward_kept(images, keep)


def _flat_scores(scores: torch.Tensor, batch: int) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a tensor [B, num_patches] or [B, gh, gw], got {type(scores).__name__}")
    if scores.dim() not in (2, 3) or scores.shape[0] != batch:
        raise ValueError(f"scores must be [B, num_patches] or [B, gh, gw] for B={batch} images, "
                         f"got shape {tuple(scores.shape)}")
    flat = scores.reshape(batch, -1).float()
    if not torch.isfinite(flat).all():
        raise ValueError("scores hold NaN or infinite values; every patch needs a finite score")
    return flat


def top_k_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]`` indices of the ``k`` highest scores per row, sorted by index.

    Ties are broken towards the lower patch index (a stable sort of ``-scores``), the
    same rule as the faithfulness metrics' removal order.
    """
    order = torch.argsort(-scores, dim=-1, stable=True)[:, :k]
    return order.sort(dim=-1).values


@torch.no_grad()
def keep_tokens(model: nn.Module, images: torch.Tensor, scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Logits of ``model`` run on the prefix tokens and the top ``keep_ratio`` patch tokens.

    Keeps ``k = max(1, floor(keep_ratio · N + 0.5))`` of the ``N`` patch tokens per image:
    the highest ``scores`` (ties towards the lower patch index), in their original
    order; prefix tokens (CLS, distillation, registers) are always kept; position
    embeddings are added before dropping (:func:`forward_kept`). ``keep_ratio=1`` gives
    exactly ``model(images)``.

    Args:
        model: a timm ``VisionTransformer`` (see the module docstring for the families).
        images: ``[B, 3, H, W]`` preprocessed batch.
        scores: ``[B, N]`` or ``[B, gh, gw]`` patch scores, higher = more important
            (e.g. from :func:`token_importance`).
        keep_ratio: fraction of patch tokens to keep, in ``(0, 1]``.

    Returns:
        ``[B, num_classes]`` logits.

    Raises:
        UnsupportedModelError: not a timm VisionTransformer (Swin, BEiT, EVA, CNNs...).
    """
    check_token_drop_model(model)
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be a fraction in (0, 1], got {keep_ratio!r}")
    flat = _flat_scores(scores, images.shape[0])
    n = flat.shape[1]
    k = min(n, max(1, count_for(float(keep_ratio), n)))
    return forward_kept(model, images, top_k_in_order(flat, k))


# ------------------------------------------------------------------------ scoring
def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def token_importance(model: nn.Module, images: torch.Tensor, method: str = "rollout",
                     target: Any = None, **options: Any) -> torch.Tensor:
    """Importance score of every patch token, ``[B, num_patches]`` (row-major patch order).

    ``method`` is any :func:`vitlens.explain` method (``"cls"``, ``"rollout"``,
    ``"grad-rollout"``, ``"chefer"``, ``"ig"``, ``"input-x-gradient"``, ``"gradcam"``,
    ``"random"``; ``target`` and ``options`` are passed on), or ``"received"``: the mean
    attention each patch token receives in layer ``options.get("layer", -1)``,
    :func:`vitlens.attention_received` (mean over heads and query rows).

    Args:
        model: a supported model in eval mode.
        images: ``[B, 3, H, W]`` preprocessed batch on the model's device.
        method: scoring method (see above).
        target: class to explain, for the explain methods that use one.
        **options: passed to :func:`vitlens.explain` (or ``layer`` for ``"received"``).

    Returns:
        ``[B, gh * gw]`` float32 scores, higher = more important.
    """
    if method == "received":
        from ..capture import capture
        from .received import attention_received

        layer = options.pop("layer", -1)
        if options:
            raise TypeError(f"method 'received' takes only the option 'layer', got {sorted(options)}")
        with torch.no_grad(), capture(model, layers=[layer]) as cache:
            model(images)
        maps = attention_received(cache, layer=layer)
    else:
        from .explain import explain  # the explain methods live in one place

        maps = explain(model, images, method=method, target=target, **options)
    return maps.reshape(maps.shape[0], -1).float()


# ------------------------------------------------------------------------ keep-ratio curve
@dataclass
class KeepRatioCurve:
    """Top-1 accuracy (%) against the fraction of patch tokens kept (:func:`keep_ratio_curve`).

    Attributes:
        ratios: keep ratios, ascending.
        accuracy: method -> accuracy in percent at each ratio; ``"random"`` is the
            random-order baseline.
        n_images: images evaluated.
        n_skipped: images that could not be decoded (skipped).
        reference: ``"labels"`` (accuracy against the given labels) or ``"prediction"``
            (agreement with the model's own prediction on the full token set).
        params: the parameters that made the curve.
        scores: ``[n_images, num_patches]`` token scores of the method, in input order.
    """

    ratios: list[float]
    accuracy: dict[str, list[float]]
    n_images: int
    n_skipped: int = 0
    reference: str = "labels"
    params: dict[str, Any] = field(default_factory=dict)
    scores: torch.Tensor | None = None

    def __repr__(self) -> str:
        lines = [f"KeepRatioCurve(  # top-1 accuracy (%) vs keep ratio on {self.n_images} images "
                 f"({self.n_skipped} skipped), reference={self.reference!r}",
                 f"    ratios={describe(list(self.ratios))},"]
        for name, acc in self.accuracy.items():
            lines.append(f"    {name}: {acc[0]:.1f} (keep {self.ratios[0]:.2g}) .. {acc[-1]:.1f} (keep {self.ratios[-1]:.2g})")
        lines.append(f"    scores={describe(self.scores)}, params={describe(self.params)}")
        return "\n".join(lines) + "\n)"

    def _repr_html_(self) -> str:
        names = list(self.accuracy)
        rows = [[f"{r:.2f}"] + [f"{self.accuracy[n][i]:.1f}" for n in names] for i, r in enumerate(self.ratios)]
        return html_table(f"KeepRatioCurve: top-1 accuracy (%) on {self.n_images} images", ["keep ratio"] + names,
                          rows, {**self.params, "reference": self.reference})

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios), "accuracy": {k: list(v) for k, v in self.accuracy.items()},
                "n_images": self.n_images, "n_skipped": self.n_skipped, "reference": self.reference,
                "params": dict(self.params)}

    def table(self) -> str:
        """Plain-text table: one row per keep ratio, one column per method."""
        names = list(self.accuracy)
        head = "keep_ratio  " + "  ".join(f"{n:>12}" for n in names)
        rows = [head]
        for i, r in enumerate(self.ratios):
            rows.append(f"{r:>10.2f}  " + "  ".join(f"{self.accuracy[n][i]:>12.2f}" for n in names))
        return "\n".join(rows)


@torch.no_grad()
def _accuracy_counts(model: nn.Module, images: torch.Tensor, flat: torch.Tensor, ref: torch.Tensor,
                     ratios: Sequence[float]) -> list[int]:
    n = flat.shape[1]
    out = []
    for r in ratios:
        k = min(n, max(1, count_for(float(r), n)))
        pred = forward_kept(model, images, top_k_in_order(flat, k)).argmax(-1)
        out.append(int((pred == ref).sum()))
    return out


def keep_ratio_curve(model: nn.Module, images: Any, labels: torch.Tensor | Sequence[int] | None = None, *,
                     method: str = "rollout", ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
                     batch_size: int = 64, seed: int = 0, target: Any = None,
                     progress: Callable[[int], None] | None = None, **options: Any) -> KeepRatioCurve:
    """Accuracy against keep ratio for ``method``'s token scores and a random order.

    For each ratio ``r`` the model runs on the top ``k = max(1, floor(r·N + 0.5))``
    patch tokens (:func:`keep_tokens`) by the method's scores and, as the baseline, by
    ``token_importance(method="random")`` (uniform noise from the generator seeded with
    ``seed * 1_000_003 + position of the batch's first image``: deterministic for the
    same input, batch size and seed). Accuracy is top-1 in percent
    against ``labels``, or, when ``labels`` is None, agreement with the model's
    prediction on all tokens.

    Args:
        model: a timm ``VisionTransformer`` in eval mode.
        images: a tensor ``[N, 3, H, W]`` or an iterable of batches (see :func:`as_batches`).
        labels: ``[N]`` class indices, or None.
        method: a :func:`token_importance` method.
        ratios: keep ratios in ``(0, 1]``.
        batch_size: images per forward when ``images`` is a tensor.
        seed: seed of the random baseline.
        target: class to explain (``None``: the method's default, the predicted class).
        progress: called with the number of images done after each batch.
        **options: passed to :func:`token_importance`.
    """
    check_token_drop_model(model)
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise ValueError(f"ratios must be fractions in (0, 1], got {ratios}")
    ratios = sorted(set(ratios))
    device = _model_device(model)
    correct = {name: [0] * len(ratios) for name in dict.fromkeys([method, "random"])}
    n_images = n_skipped = 0
    reference = "labels" if labels is not None else None
    all_scores = []
    for batch in as_batches(images, labels, batch_size):
        n_skipped += batch.skipped
        if batch.images.shape[0] == 0:
            continue
        x = batch.images.to(device)
        if batch.labels is not None:
            ref = batch.labels.to(device)
            reference = reference or "labels"
        else:
            with torch.no_grad():
                ref = logits_of(model, model(x)).argmax(-1)
            reference = reference or "prediction"
        opts = dict(options)
        if method == "random":
            opts.setdefault("seed", int(seed) * 1_000_003 + int(batch.index[0]))
        scores = token_importance(model, x, method=method, target=target, **opts)
        all_scores.append(scores.detach().cpu())
        runs = {method: scores}
        if method != "random":
            runs["random"] = token_importance(model, x, method="random",
                                              seed=int(seed) * 1_000_003 + int(batch.index[0]))
        for name, s in runs.items():
            for i, c in enumerate(_accuracy_counts(model, x, s, ref, ratios)):
                correct[name][i] += c
        n_images += x.shape[0]
        if progress is not None:
            progress(x.shape[0] + batch.skipped)
    if n_images == 0:
        raise VitlensError("no image could be evaluated (all inputs failed to decode or the input is empty)")
    acc = {k: [100.0 * c / n_images for c in v] for k, v in correct.items()}
    return KeepRatioCurve(ratios, acc, n_images, n_skipped, reference or "labels",
                          {"method": method, "seed": seed, "options": dict(options)},
                          torch.cat(all_scores) if all_scores else None)
