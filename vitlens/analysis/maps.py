"""Deprecated: :func:`attention_maps`, the attention-only predecessor of :func:`vitlens.explain`.

Kept one release for its callers (it warns with a DeprecationWarning); it is
``vitlens.explain(..., details=True)`` restricted to ``cls`` and ``rollout``, with the
result named as before.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import nn

from .._util import maps_html, maps_repr
from ..capture import TokenLayout
from .explain import explain

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
    """Deprecated: use ``vitlens.explain(model, images, method, details=True, ...)``.

    One forward pass of ``model`` on a preprocessed batch; CLS or rollout maps.

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
    warnings.warn("vitlens.attention_maps(...) is deprecated and will be removed in the next release; use "
                  "vitlens.explain(model, images, method, details=True, ...)", DeprecationWarning, stacklevel=2)
    if method not in ATTENTION_METHODS:
        raise ValueError(f"method must be one of {ATTENTION_METHODS}, got {method!r}; "
                         f"vitlens.explain has every method")
    if method == "cls":
        res = explain(model, images, "cls", layer=layer, head=head, details=True)
        return AttentionMaps(res.logits, res.maps, res.layout, method, res.options["layer"], head)
    res = explain(model, images, "rollout", head=head, discard_ratio=discard_ratio, details=True)
    return AttentionMaps(res.logits, res.maps, res.layout, method, None, head)
