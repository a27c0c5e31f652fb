"""A joint 2-D embedding of the query and key vectors of one attention head (AttentionViz)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class QueryKeyEmbedding(NamedTuple):
    """Result of :func:`query_key_embedding`."""

    queries: torch.Tensor     #: ``[M, n_components]`` projected (normalised) query vectors
    keys: torch.Tensor        #: ``[M, n_components]`` projected (normalised) key vectors
    explained: torch.Tensor   #: ``[n_components]`` fraction of the joint variance each axis holds
    scale: float              #: the factor ``s`` queries were multiplied by (keys divided by)


def query_key_embedding(queries: torch.Tensor, keys: torch.Tensor, n_components: int = 2) -> QueryKeyEmbedding:
    """Project the queries and keys of one head into one plane, as AttentionViz does.

    Yeh et al., "AttentionViz: A Global View of Transformer Attention", IEEE VIS 2023
    (https://arxiv.org/abs/2305.03210), §4: before a joint projection, two transformations
    that leave every attention probability unchanged make queries and keys comparable:

    1. scale: ``q ← s·q``, ``k ← k / s`` with ``s = sqrt(spread(k) / spread(q))``,
       ``spread(x) = mean‖x − mean(x)‖``, so both sets have the same spread (``q·k`` is
       unchanged);
    2. translate: ``k ← k − mean(k) + mean(q)``, so both sets share a centroid (adds
       ``q·c`` to every logit of query ``q``, a constant over the keys, which the softmax
       removes).

    AttentionViz equalises the mean norms; the spread about each set's own mean is used
    here instead, so the result is the same for every (q, k) that gives the same attention:
    unchanged when a constant is added to all keys, or q scaled by ``a`` and k by ``1/a``.

    Then PCA of the joint, centred set ``[q; k]`` (exact SVD; ``M`` rows each, ``d``
    columns), keeping ``n_components`` axes. A query lands near the keys it attends to
    most when ``q·k`` is large relative to the norms (AttentionViz's reading of the plot).

    Args:
        queries: ``[M, d]`` query vectors of one head (pooled over tokens and images).
        keys: ``[M', d]`` key vectors of the same head.
        n_components: axes kept, at most ``d``.

    Returns:
        :class:`QueryKeyEmbedding`.
    """
    if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"`queries` and `keys` must be [M, d] with the same d, got {tuple(queries.shape)} "
                         f"and {tuple(keys.shape)}")
    d = queries.shape[1]
    if isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components <= d:
        raise ValueError(f"`n_components` must be an int in 1..{d}, got {n_components!r}")
    q, k = queries.double(), keys.double()
    nq, nk = (q - q.mean(0)).norm(dim=1).mean(), (k - k.mean(0)).norm(dim=1).mean()
    s = float(torch.sqrt(nk / nq)) if nq > 0 and nk > 0 else 1.0
    q, k = q * s, k / s
    k = k - k.mean(0) + q.mean(0)
    x = torch.cat([q, k])
    x = x - x.mean(0)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    var = sv ** 2
    total = var.sum()
    explained = var[:n_components] / total if total > 0 else torch.zeros(n_components, dtype=var.dtype)
    proj = x @ vh[:n_components].T
    return QueryKeyEmbedding(proj[:q.shape[0]].float(), proj[q.shape[0]:].float(), explained.float(), s)
