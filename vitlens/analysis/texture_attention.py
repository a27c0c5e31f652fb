"""Where a ViT's CLS attention falls on cue-conflict images: on high-texture patches or not.

:func:`vitlens.shape_bias` measures it in the forward pass that makes each decision;
:class:`TextureAttention` gives the definition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._util import deprecated_alias

__all__ = ["TextureAttention", "texture_shares", "texture_attention_unavailable", "summarise_texture_attention"]


@dataclass(frozen=True)
class TextureAttention:
    """Where the last layer's CLS attention falls on cue-conflict images.

    Definition, per image: the input is the stimulus after the same resize the model sees
    (before normalisation), converted to grey with ITU-R 601 weights
    ``0.299 R + 0.587 G + 0.114 B`` (values in [0, 1]). For each patch of the model's patch
    grid, the local variance is the population variance of the grey values inside that
    patch. Patches whose variance is at or above the image's median patch variance
    (``np.median``, the mean of the two middle values for an even count) are
    *high-texture*, the rest *low-texture*. With ``a`` the last layer's CLS attention over
    the patch keys, mean over heads (:func:`vitlens.cls_attention`, recorded in the same
    forward pass that makes the decision), the share is
    ``sum(a[high]) / sum(a[all patches])`` — renormalised over patches, so attention the
    CLS query puts on prefix tokens does not count.

    Attributes:
        share: mean share over the cue-conflict images that were scored (outcomes
            ``shape``, ``texture`` and ``other``); None if there are none.
        share_shape: mean share over images decided by shape; None if none.
        share_texture: mean share over images decided by texture; None if none.
        share_other: mean share over images decided as neither; None if none.
        chance: mean fraction of patches that are high-texture on the same images, i.e.
            the share uniform attention would give (at least 0.5 by construction).
        n_images: images averaged in ``share``.
        layer: the (non-negative) layer index the attention comes from.
        head: how heads were fused (``"mean"``).
    """

    share: float | None
    share_shape: float | None
    share_texture: float | None
    share_other: float | None
    chance: float | None
    n_images: int
    layer: int
    head: str = "mean"

    head_fusion = deprecated_alias("head", "head_fusion", "TextureAttention")


def texture_attention_unavailable(model: nn.Module) -> str | None:
    """Why the texture-attention share cannot be measured on ``model``, or None when it can."""
    from ..capture import adapter_for
    from ..errors import UnsupportedModelError

    try:
        desc = adapter_for(model).describe()
    except UnsupportedModelError as e:
        return f"vitlens.capture does not support this model: {str(e).split(':', 1)[0]}"
    if not desc.has_cls or desc.windowed:
        return "the model has no CLS token (global-pool or windowed model)"
    return None


def texture_shares(x: torch.Tensor, cache: Any, mean: Sequence[float], std: Sequence[float]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per image: CLS attention share on high-texture patches, and the high-texture fraction.

    Args:
        x: ``[B, 3, H, W]`` the normalised model input.
        cache: a capture of the same forward with the last layer's CLS row.
        mean, std: the normalisation, undone to get the resized image in [0, 1].
    """
    from .cls_attention import cls_attention

    layout = cache.layout
    (gh, gw), (ph, pw) = layout.grid_size, layout.patch_size
    m = torch.tensor(mean, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
    rgb = x.double() * s + m                                          # [B, 3, H, W], the resized image in [0, 1]
    grey = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]  # [B, H, W]
    b = grey.shape[0]
    patches = grey[:, :gh * ph, :gw * pw].reshape(b, gh, ph, gw, pw)
    var = patches.var(dim=(2, 4), correction=0).reshape(b, gh * gw)  # [B, N]
    high = var >= var.quantile(0.5, dim=1, keepdim=True)              # linear interpolation = np.median
    amap = cls_attention(cache, layer=-1, head="mean").reshape(b, -1).double().to(x.device)  # [B, N]
    share = (amap * high).sum(1) / amap.sum(1).clamp_min(torch.finfo(torch.float64).tiny)
    return share.cpu().numpy(), high.double().mean(1).cpu().numpy()


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise_texture_attention(decisions: Sequence[Any], high_fraction: dict[str, float], layer: int
                                ) -> TextureAttention:
    """Average the per-image shares of the scored decisions (outcomes shape, texture, other).

    Args:
        decisions: :class:`~vitlens.analysis.shape_bias.ImageDecision` records.
        high_fraction: path -> fraction of high-texture patches of that image.
        layer: the layer the attention came from.
    """
    scored = [r for r in decisions if r.outcome in ("shape", "texture", "other") and r.texture_share is not None]
    return TextureAttention(
        share=_mean_or_none([r.texture_share for r in scored]),
        share_shape=_mean_or_none([r.texture_share for r in scored if r.outcome == "shape"]),
        share_texture=_mean_or_none([r.texture_share for r in scored if r.outcome == "texture"]),
        share_other=_mean_or_none([r.texture_share for r in scored if r.outcome == "other"]),
        chance=_mean_or_none([high_fraction[r.path] for r in scored]),
        n_images=len(scored), layer=layer)
