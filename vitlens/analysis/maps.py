"""Run a model once and turn its attention into patch maps (the ``vitlens attend`` pipeline)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..capture import TokenLayout, capture
from .cls_attention import HEAD_FUSIONS, cls_attention
from .rollout import rollout

METHODS = ("cls", "rollout")


class AttentionMaps(NamedTuple):
    """Result of :func:`attention_maps`, with the parameters that made it."""

    logits: torch.Tensor      #: ``[B, C]``
    maps: torch.Tensor        #: ``[B, gh, gw]``, or ``[B, heads, gh, gw]`` for ``head=None``
    layout: TokenLayout
    method: str
    layer: int | None         #: resolved layer (cls) or None (rollout uses every layer)
    head: str | int | None


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor, *, method: str = "cls", layer: int = -1,
                   head: str | int | None = "mean", discard_ratio: float = 0.0) -> AttentionMaps:
    """One forward pass of ``model`` on a preprocessed batch; CLS or rollout maps.

    ``method="cls"`` records only the CLS query row of ``layer`` (cheap: no T x T matrix);
    ``method="rollout"`` records every layer in full (``head`` then names the fusion).

    Args:
        model: a supported model in eval mode.
        images: ``[B, 3, H, W]`` preprocessed batch on the model's device.
        method: ``"cls"`` or ``"rollout"``.
        layer: layer for ``"cls"``; negative counts from the end.
        head: ``"mean"``/``"max"``/``"min"``, a head index (cls only), or None for every head (cls only).
        discard_ratio: rollout's discard ratio.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "cls":
        with capture(model, layers=[layer], rows="prefix" if getattr(model, "num_prefix_tokens", 0) else "all") as cache:
            logits = model(images)
        maps = cls_attention(cache, layer=layer, head=head)
        resolved: int | None = cache.layers[0]
    else:
        if head not in HEAD_FUSIONS:
            raise ValueError(f"rollout fuses heads by one of {HEAD_FUSIONS}, got head={head!r}; "
                             f"per-head maps exist only for method 'cls'")
        with capture(model) as cache:
            logits = model(images)
        maps = rollout(cache, head_fusion=str(head), discard_ratio=discard_ratio)
        resolved = None
    assert cache.layout is not None
    return AttentionMaps(logits, maps, cache.layout, method, resolved, head)
