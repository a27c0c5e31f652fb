"""High-norm "artefact" patch tokens (Darcet et al., "Vision Transformers Need Registers", 2024,
https://arxiv.org/abs/2309.16588): patch tokens whose output norm is an outlier, which large ViTs
repurpose as global scratch space and which show up as bright spots in attention maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._util import compact_repr, deprecated_alias, model_device, renamed, resolve_index
from ..errors import UnsupportedModelError
from ..capture.cache import TokenLayout

#: Scale that turns the median absolute deviation into a standard deviation for normal data.
MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class HighNormTokens:
    """Result of :func:`high_norm_tokens`.

    Attributes:
        mask: ``[B, gh, gw]`` bool, True for flagged (high-norm) patch tokens.
        norms: ``[B, gh, gw]`` float32, L2 norm of each patch token's output.
        threshold: ``[B]`` float32, the norm above which a token is flagged, per image.
        prefix_norms: ``[B, P]`` float32, norms of the prefix tokens (CLS, registers...),
            for reference; they are never flagged.
        layer: index of the block whose output was measured (non-negative; None when
            the norms were given directly).
        k: robust z-score cut-off used (None when ``threshold`` was absolute).
        absolute: the absolute threshold used, or None for the per-image robust rule.
        layout: the token layout of the run (None when the norms were given directly).
    """

    mask: torch.Tensor
    norms: torch.Tensor
    threshold: torch.Tensor
    prefix_norms: torch.Tensor
    layer: int | None
    k: float | None
    absolute: float | None
    layout: TokenLayout | None

    block = deprecated_alias("layer", "block", "HighNormTokens")

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that made the result: ``layer``, ``k`` and the absolute ``threshold``."""
        return {"layer": self.layer, "k": self.k, "threshold": self.absolute}

    def __repr__(self) -> str:
        frac = self.fraction
        rule = f"norm > {self.absolute:g}" if self.absolute is not None else f"robust z > {self.k:g}"
        return compact_repr("HighNormTokens", [
            ("mask", self.mask), ("norms", self.norms), ("threshold", self.threshold),
            ("prefix_norms", self.prefix_norms), ("layer", self.layer), ("k", self.k), ("absolute", self.absolute),
            ("layout", self.layout)],
            summary=f"{int(self.mask.sum())} tokens flagged ({rule}); fraction per image "
                    f"{float(frac.min()):.3f}..{float(frac.max()):.3f}" if frac.numel() else rule)

    @property
    def fraction(self) -> torch.Tensor:
        """``[B]`` fraction of patch tokens flagged per image (Darcet et al. report ~2%)."""
        return self.mask.flatten(1).float().mean(1)


def flag_outliers(norms: torch.Tensor, *, k: float = 5.0, threshold: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flag outlier norms per image: the rule of :func:`high_norm_tokens`.

    Robust rule (default): ``norm > median + k · 1.4826 · MAD`` over the patch tokens of each
    image, with ``MAD = median(|norm - median|)`` (1.4826·MAD estimates the standard
    deviation of normal data, so ``k`` is a robust z-score). Median and MAD are barely moved
    by a few artefacts, unlike the mean and std. Absolute rule: ``norm > threshold``, the
    paper's choice (Darcet et al. use 150 for DINOv2 ViT-g; the scale is model-specific).

    Args:
        norms: ``[B, ...]`` norms per image (any trailing shape, e.g. ``[B, gh, gw]``).
        k: robust z-score cut-off, > 0.
        threshold: absolute norm threshold; when given, ``k`` is not used.

    Returns:
        ``(mask, threshold)``: bool like ``norms`` and ``[B]`` float32 thresholds.
    """
    if threshold is None:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
            raise ValueError(f"k must be a positive number (a robust z-score, e.g. 5), got {k!r}")
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number (an absolute norm) or None, got {threshold!r}")
    flat = norms.detach().float().flatten(1)
    if threshold is not None:
        thr = torch.full((flat.shape[0],), float(threshold), dtype=torch.float32, device=flat.device)
    else:
        med = flat.quantile(0.5, dim=1)                                 # mean of the middle two, as numpy
        mad = (flat - med[:, None]).abs().quantile(0.5, dim=1)
        thr = med + float(k) * MAD_TO_STD * mad
    mask = flat > thr[:, None]
    return mask.reshape(norms.shape), thr


@renamed(block="layer")
def token_norms(model: nn.Module, images: torch.Tensor, layer: int = -1
                ) -> tuple[torch.Tensor, torch.Tensor, TokenLayout, int]:
    """L2 norms of every token at the output of one transformer block.

    The norm is taken on the output of block ``layer`` (the residual stream after that
    block, before the model's final norm), per token over the embedding dimension.

    Args:
        model: a flat timm ViT-like model (``patch_embed`` + ``blocks``; ViT, DeiT, DINOv2,
            BEiT, EVA...). Windowed models (Swin) have no prefix tokens to compare with and
            are not supported.
        images: ``[B, 3, H, W]`` preprocessed.
        layer: block index, negative counts from the end (default: the last block).

    Returns:
        ``(patch_norms [B, gh, gw], prefix_norms [B, P], layout, layer)`` (float32, layer
        non-negative).
    """
    from ..capture.adapters import adapter_for

    adapter = adapter_for(model)
    try:
        blocks = [m for _path, m in adapter.block_points()]
    except UnsupportedModelError:
        raise ValueError(f"high-norm tokens are measured on flat ViT-like models (patch_embed + blocks); "
                         f"{type(model).__name__} ({adapter.family}) is not one") from None
    block = resolve_index(layer, len(blocks), "layer")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    layout = adapter.layout_for(tuple(images.shape[-2:]))
    seen: dict[str, torch.Tensor] = {}

    def on_output(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        seen["x"] = out.detach()

    handle = blocks[block].register_forward_hook(on_output)
    try:
        with torch.no_grad():
            model(images.to(model_device(model)))
    finally:
        handle.remove()
    x = seen["x"]
    if x.dim() != 3 or x.shape[1] != layout.num_tokens:
        raise ValueError(f"layer {block} output has shape {tuple(x.shape)}; expected [B, {layout.num_tokens}, C] "
                         f"for the token layout {layout.prefix_names} + {layout.grid_size} patches")
    norms = x.float().norm(dim=-1)
    P = layout.num_prefix_tokens
    return norms[:, P:].reshape(-1, *layout.grid_size), norms[:, :P], layout, block


@renamed(block="layer")
def high_norm_tokens(model_or_norms: nn.Module | torch.Tensor, images: torch.Tensor | None = None, *,
                     layer: int = -1, k: float = 5.0, threshold: float | None = None) -> HighNormTokens:
    """Flag patch tokens whose output norm is an outlier (Darcet et al. 2024's artefacts).

    Darcet et al. (https://arxiv.org/abs/2309.16588, Sec. 2) find that large, long-trained
    ViTs (DINOv2, OpenCLIP, DeiT-III) turn ~2% of patch tokens, mostly in redundant
    background, into carriers of global information: their output norm is ~10x that of
    other tokens (bimodal norm histogram), they hold little local information, and they
    cause the bright spots in attention maps. Registers (extra prefix tokens) remove them.

    Rule, per image over its patch tokens (prefix tokens never flagged): flagged when
    ``norm > median + k · 1.4826 · MAD`` (robust z-score above ``k``; see
    :func:`flag_outliers`), or ``norm > threshold`` when an absolute threshold is given
    (the paper's rule: 150 for DINOv2 ViT-g). The norm is measured at the output of
    block ``layer`` (the residual stream, before the final norm; default the last block).

    A cache from :func:`vitlens.capture` holds attention, not token states, so this needs
    the model and images (or norms you measured yourself).

    Args:
        model_or_norms: a flat timm ViT-like model (then ``images`` is required), or
            precomputed ``[B, gh, gw]`` norms to flag.
        images: ``[B, 3, H, W]`` preprocessed images for the model.
        layer: index of the block whose output is measured (negative from the end;
            ``block=`` is the deprecated name of this argument).
        k: robust z-score cut-off (default 5: for normal data about 3 in 10 million tokens).
        threshold: absolute norm threshold instead of the robust rule.

    Returns:
        :class:`HighNormTokens` with ``mask [B, gh, gw]``, ``norms``, the per-image
        thresholds and the parameters. Use ``mask`` to mark tokens on an overlay
        (:func:`vitlens.export.overlay.mark_tokens`) or to leave them out of a map.
    """
    if isinstance(model_or_norms, torch.Tensor):
        if images is not None:
            raise ValueError("got norms and images: pass either a model and images, or [B, gh, gw] norms alone")
        norms = model_or_norms.detach().float()
        if norms.dim() != 3:
            raise ValueError(f"norms must be [B, gh, gw], got shape {tuple(norms.shape)}")
        prefix = norms.new_zeros(norms.shape[0], 0)
        layout, used = None, None
    elif isinstance(model_or_norms, nn.Module):
        if images is None:
            raise ValueError("high_norm_tokens(model, images): the images are missing; pass a [B, 3, H, W] tensor")
        norms, prefix, layout, used = token_norms(model_or_norms, images, layer)
    else:
        raise TypeError(f"expected a timm model or a [B, gh, gw] tensor of norms, got "
                        f"{type(model_or_norms).__name__}; a capture cache holds no token states")
    mask, thr = flag_outliers(norms, k=k, threshold=threshold)
    return HighNormTokens(mask=mask, norms=norms, threshold=thr, prefix_norms=prefix, layer=used,
                          k=None if threshold is not None else float(k),
                          absolute=None if threshold is None else float(threshold), layout=layout)
