"""Run a model once and turn its attention into patch maps (the ``vitlens attend`` pipeline).

Kept for its callers; it is :func:`vitlens.explanation` restricted to the attention
methods, with the result named as before. New code should call :func:`vitlens.explain`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .._util import maps_html, maps_repr
from ..capture import TokenLayout
from .explain import explanation

#: The methods :func:`attention_maps` accepts (the attention-only subset of ``explain``'s).
ATTENTION_METHODS = ("cls", "rollout")


class AttentionMaps(NamedTuple):
    """Result of :func:`attention_maps`, with the parameters that made it."""

    logits: torch.Tensor      #: ``[B, C]``
    maps: torch.Tensor        #: ``[B, gh, gw]``, or ``[B, heads, gh, gw]`` for ``head=None``
    layout: TokenLayout
    method: str
    layer: int | None         #: resolved layer (cls) or None (rollout uses every layer)
    head: str | int | None

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that made the maps."""
        return {"method": self.method, "layer": self.layer, "head": self.head}

    def __repr__(self) -> str:
        return maps_repr("AttentionMaps", self)

    def _repr_html_(self) -> str:
        return maps_html("AttentionMaps", self)


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
    if method not in ATTENTION_METHODS:
        raise ValueError(f"method must be one of {ATTENTION_METHODS}, got {method!r}; "
                         f"vitlens.explain has every method")
    if method == "cls":
        res = explanation(model, images, "cls", layer=layer, head=head)
        return AttentionMaps(res.logits, res.maps, res.layout, method, res.options["layer"], head)
    res = explanation(model, images, "rollout", head=head, discard_ratio=discard_ratio)
    return AttentionMaps(res.logits, res.maps, res.layout, method, None, head)
