"""Attention received: how much attention each token gets, per layer."""
from __future__ import annotations

import torch

from .._util import resolve_index
from ..capture.cache import AttentionCache, from_windows
from .cls_attention import fuse_heads


def attention_received(cache: AttentionCache, layer: int = -1, head: str | int | None = "mean") -> torch.Tensor:
    """Mean attention each patch token receives in one layer, as a map.

    For layer ``l`` with probabilities ``A`` (rows are queries, columns keys), the map of
    head ``h`` at patch ``k`` is the mean of the key column over the query rows that
    could attend to it::

        received_h[k] = (1 / |Q(k)|) · Σ_{q ∈ Q(k)} A[h, q, k]

    - Flat models (ViT, DeiT, ...): ``Q(k)`` is every query row of the sequence, prefix
      rows included (``|Q| = T``); the prefix-token *columns* (CLS, distillation,
      registers) are left out of the map. Uniform attention gives ``1/T`` everywhere.
    - Windowed models (Swin, SwinV2): on the dense matrix in stage coordinates
      (``cache.dense_attention(l)``), ``Q(k)`` is the real (non-padding) tokens of k's
      window in that block -- the shifted window for shifted blocks, masked-region
      queries included (they give 0). Averaging over the window, not the stage, keeps the
      map free of the window geometry: uniform attention within windows gives ``1/n``
      everywhere (``n = wh * ww``), also at padded edges. The map is on that layer's
      stage grid (``cache.layout_of(l).grid_size``).

    A value above the uniform level means the token draws more than its share of
    attention (a "sink" when extreme; cf. Darcet et al. 2024,
    https://arxiv.org/abs/2309.16588).

    Args:
        cache: from :func:`vitlens.capture` with ``rows="all"``.
        layer: layer index, negative counts from the end.
        head: ``"mean"`` | ``"max"`` | ``"min"`` fuse the per-head maps (``"mean"`` is the
            mean over heads and queries); an int selects one recorded head; None keeps
            every recorded head.

    Returns:
        ``[B, gh, gw]`` float32, or ``[B, heads, gh, gw]`` for ``head=None``.
    """
    if cache.rows != "all":
        raise ValueError("attention_received averages over every query row; capture with rows='all' "
                         f"(this cache has rows={cache.rows!r})")
    attn = cache.attention(layer).float()
    cache.require_token_attention("attention_received", [layer])
    if cache.windowed:
        wl = cache.layout_of(layer)
        real = (wl.token_index(attn.device) >= 0)                    # [nW, n]
        n_queries = real.sum(-1).clamp_min(1).to(attn.dtype)         # real queries per window
        col = (attn * real[None, :, None, :, None]).sum(-2)          # [B, nW, H, n]: column sums
        per_head = from_windows((col / n_queries[None, :, None, None]).transpose(1, 2), wl)  # [B, H, N]
        grid = wl.grid_size
    else:
        layout = cache.layout
        assert layout is not None
        per_head = attn[:, :, :, layout.num_prefix_tokens:].mean(dim=2)   # [B, H, gh*gw]
        grid = layout.grid_size
    if head is None:
        out = per_head
    elif isinstance(head, str):
        out = fuse_heads(per_head, head)
    else:
        if cache.layer_heads:
            n = cache.layer_heads[cache.resolve_layer(layer)]
            h = resolve_index(head, n, "head", owner=f"layer {cache.resolve_layer(layer)}")
            if h not in cache.heads:
                raise ValueError(f"head {h} was not recorded (recorded heads: {list(cache.heads)})")
            out = per_head[:, cache.heads.index(h)]
        else:
            out = per_head[:, cache.resolve_head(head)]
    return out.reshape(*out.shape[:-1], *grid)
