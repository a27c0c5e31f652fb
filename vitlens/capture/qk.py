"""Record the query and key vectors of attention layers (what the probabilities are made of),
for joint query/key embeddings such as AttentionViz's (Yeh et al., IEEE VIS 2023,
https://arxiv.org/abs/2305.03210). Which modules hold them is the adapter's knowledge
(``Adapter.query_key_modules``); hooks live only inside this call."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from .adapters import adapter_for
from .cache import TokenLayout
from .recorder import _resolve_indices, capture


class QueriesKeys(NamedTuple):
    """Result of :func:`queries_and_keys`."""

    queries: dict[int, torch.Tensor]   #: layer -> ``[B, H, T, d]`` (after q-norm, before the softmax scale)
    keys: dict[int, torch.Tensor]      #: layer -> ``[B, H, T, d]`` (after k-norm)
    logits: torch.Tensor               #: ``[B, C]``
    layout: TokenLayout


@torch.no_grad()
def queries_and_keys(model: nn.Module, images: torch.Tensor,
                     layers: Sequence[int] | int | None = None) -> QueriesKeys:
    """One forward of ``model`` on ``images``; the query and key vectors of ``layers``.

    The attention logits of head ``h`` are ``scale · q_h · k_hᵀ`` with these vectors, so
    ``softmax`` of that over the keys is the probability matrix :func:`vitlens.capture`
    records (the model's ``scale``, ``d ** -0.5``, is not applied here).

    Args:
        model: a model whose adapter exposes query and key modules (the ViT family).
        images: ``[B, 3, H, W]`` preprocessed batch on the model's device.
        layers: layer indices (negative counts from the end); None = all.

    Raises:
        UnsupportedModelError: the model's family has no token-level query/key vectors
            vitlens can read (e.g. Swin's windowed attention).
    """
    adapter = adapter_for(model)
    chosen = _resolve_indices(layers, len(adapter.attention_modules()), "layer", "layers")
    points = {layer: adapter.query_key_modules(layer) for layer in chosen}
    got: dict[str, dict[int, torch.Tensor]] = {"q": {}, "k": {}}
    handles = []
    try:
        for layer, (qm, km) in points.items():
            handles.append(qm.register_forward_hook(
                lambda _m, _i, out, layer=layer: got["q"].__setitem__(layer, out.detach())))
            handles.append(km.register_forward_hook(
                lambda _m, _i, out, layer=layer: got["k"].__setitem__(layer, out.detach())))
        rows = "prefix" if getattr(model, "num_prefix_tokens", 0) else "all"
        with capture(model, layers=[chosen[-1]], rows=rows) as cache:   # for the token layout
            logits = model(images)
    finally:
        for h in handles:
            h.remove()
    assert cache.layout is not None
    missing = [layer for layer in chosen if layer not in got["q"] or layer not in got["k"]]
    if missing:
        raise RuntimeError(f"the query/key modules of layers {missing} did not run in the forward pass")
    return QueriesKeys(got["q"], got["k"], logits.detach(), cache.layout)
