"""Attention rollout (Abnar & Zuidema, 2020)."""
from __future__ import annotations

import torch

from ..capture.cache import AttentionCache
from .cls_attention import fuse_heads


def discard_lowest(fused: torch.Tensor, discard_ratio: float, keep_col: int | None) -> torch.Tensor:
    """Zero the lowest ``discard_ratio`` fraction of entries per matrix, sparing one column.

    Args:
        fused: ``[B, T, T]`` head-fused attention.
        discard_ratio: fraction in ``[0, 1)`` of the entries outside column ``keep_col``
            (all entries when None) to set to 0, per image.
        keep_col: the CLS column, never discarded.
    """
    if discard_ratio <= 0:
        return fused
    b, t, _ = fused.shape
    ranked = fused.clone()
    n_candidates = t * t
    if keep_col is not None:
        ranked[:, :, keep_col] = float("inf")
        n_candidates = t * (t - 1)
    k = int(discard_ratio * n_candidates)
    if k == 0:
        return fused
    idx = ranked.reshape(b, -1).topk(k, dim=-1, largest=False).indices
    return fused.reshape(b, -1).scatter(1, idx, 0.0).reshape(b, t, t)


def rollout(cache: AttentionCache, head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout map.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
    https://arxiv.org/abs/2005.00928. Per layer ``l`` (DESIGN.md §4):

    1. fuse heads: ``A_l = mean_h A_l[h]`` (or max/min);
    2. optionally set to 0 the lowest ``discard_ratio`` fraction of the entries outside
       the CLS column (per image, per layer);
    3. ``Â_l = 0.5·A_l + 0.5·I`` (the residual connection), rows renormalised to sum 1;
    4. ``R = Â_L ··· Â_1`` (multiplied from the first layer up).

    The map is ``R[cls, prefix:]`` renormalised to sum to 1. A model without CLS token
    uses the mean of R's patch rows, ``mean_i R[i, prefix:]`` over patch rows i.

    Args:
        cache: captured with ``rows="all"`` and every layer from 0 up to the last one
            to include (normally all layers).
        head_fusion: ``"mean"`` | ``"max"`` | ``"min"``.
        discard_ratio: in ``[0, 1)``.

    Returns:
        ``[B, gh, gw]`` float32 maps, each summing to 1.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if cache.rows != "all":
        raise ValueError("rollout needs the full T x T attention; capture with rows='all' "
                         f"(this cache has rows={cache.rows!r})")
    layers = cache.layers
    if layers != list(range(len(layers))):
        raise ValueError(f"rollout multiplies every layer from layer 0 up; this cache recorded "
                         f"layers {layers}. Capture with layers=None (all layers)")
    layout = cache.layout
    if layout is None:
        cache.attention(layers[0])  # raises the "nothing was recorded" error
    assert layout is not None
    P, cls = layout.num_prefix_tokens, layout.cls_index
    R = None
    for layer in layers:
        a = fuse_heads(cache.attention(layer).float(), head_fusion)  # [B, T, T]
        a = discard_lowest(a, discard_ratio, cls)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        R = a if R is None else a @ R
    assert R is not None
    if cls is not None:
        m = R[:, cls, P:]
    else:
        m = R[:, P:, P:].mean(dim=1)
    m = m / m.sum(dim=-1, keepdim=True)
    return m.reshape(m.shape[0], *layout.grid_size)
