"""Attention rollout (Abnar & Zuidema, 2020)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..capture.cache import AttentionCache, WindowLayout, from_windows, to_windows
from .._util import renamed
from ..capture.reduce import reduction_of
from .cls_attention import HEAD_FUSIONS, fuse_heads


def _zero_lowest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, n]`` bool: the ``k`` lowest entries of each row (ties at the k-th value: the first in index order).

    One ``kthvalue`` (a selection, O(n)) gives the k-th smallest value ``v`` per row; every
    entry below ``v`` is discarded, and of the entries equal to ``v`` the first
    ``k − #{< v}`` in row-major order, so exactly ``k`` entries go, as a full ``topk`` of
    the k smallest would (which of several *equal* entries a topk picks is unspecified;
    the zeroed values are the same).
    """
    thr = values.kthvalue(k, dim=-1, keepdim=True).values
    below = values < thr
    tied = values == thr
    need = k - below.sum(dim=-1, keepdim=True)
    if bool((tied.sum(dim=-1, keepdim=True) == need).all()):   # the usual case: no ties at the threshold
        return below | tied
    return below | (tied & (tied.cumsum(dim=-1) <= need))


def discard_lowest(fused: torch.Tensor, discard_ratio: float, keep_col: int | None) -> torch.Tensor:
    """Zero the lowest ``discard_ratio`` fraction of entries per matrix, sparing one column.

    ``k = int(discard_ratio · n)`` entries are set to 0 per image, ``n = T·(T−1)`` the
    entries outside column ``keep_col`` (``T·T`` when None); they are found with one
    ``kthvalue`` threshold per image and layer (:func:`_zero_lowest`) instead of a full
    ``topk`` over the ``n`` entries (the same entries, a fraction of the cost).

    Args:
        fused: ``[B, T, T]`` head-fused attention.
        discard_ratio: fraction in ``[0, 1)`` of the entries outside column ``keep_col``
            (all entries when None) to set to 0, per image.
        keep_col: the CLS column, never discarded.
    """
    if discard_ratio <= 0:
        return fused
    b, t, _ = fused.shape
    n_candidates = t * (t - 1) if keep_col is not None else t * t
    k = int(discard_ratio * n_candidates)
    if k == 0:
        return fused
    ranked = fused
    if keep_col is not None:
        ranked = fused.clone()
        ranked[:, :, keep_col] = float("inf")
    drop = _zero_lowest(ranked.reshape(b, -1), k)
    return fused.masked_fill(drop.reshape(b, t, t), 0.0)


_CHUNK_BYTES = 1 << 20  # float32 bytes of one head-fused chunk in rollout: fits a core's cache


def fused_layer(layer_attn: torch.Tensor, head: str, discard_ratio: float, P: int, cls: int | None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
    """Steps 1-2 of rollout for one token-level layer: ``[b, H, T, T]`` -> fused ``A_l`` ``[b, T, T]``
    float32 (heads fused, lowest entries discarded sparing the CLS column, excluded keys zeroed)."""
    a = fuse_heads(layer_attn.float(), head)  # [b, T, T]
    a = discard_lowest(a, discard_ratio, cls)
    if drop is not None:
        a = a.clone()
        a[:, :, P:] = a[:, :, P:].masked_fill(drop.to(a.device)[:, None, :], 0.0)
    return a


def residual_step(a: torch.Tensor, x: torch.Tensor | None, *, left: bool) -> torch.Tensor:
    """Step 3 applied: ``Â = D⁻¹(½·A + ½·I)`` with ``D = diag(½·rowsum(A) + ½)`` (rows renormalised).

    The one implementation of the formula, for both orders of the product:

    - ``left=True``: ``Â·x`` for the running product ``x = R`` ``[b, T, T]`` (forward order,
      ``R ← Â_l·R``, as reduce-on-record sees the layers); ``x=None`` stands for the
      identity (the first layer) and returns ``Â`` itself, without the matrix product;
    - ``left=False``: ``x·Â`` for a row vector ``x`` ``[..., q]`` over ``a`` ``[..., q, k]``
      (pushed down from the last layer, ``v ← v·Â_l``; windowed ``[B, nW, n]`` too).
    """
    d = 0.5 * a.sum(dim=-1) + 0.5
    if left and x is None:
        r = a.mul(0.5)
        r.diagonal(dim1=-2, dim2=-1).add_(0.5)
        return r.div_(d.unsqueeze(-1))
    if left:
        return torch.baddbmm(x, a, x, beta=0.5, alpha=0.5).div_(d.unsqueeze(-1))
    w = x / d
    return 0.5 * torch.einsum("...q,...qk->...k", w, a) + 0.5 * w


def readout_vector(b: int, T: int, P: int, cls: int | None, like: torch.Tensor) -> torch.Tensor:
    """``[b, T]``: the row of R the map is: the CLS row, or the mean of the patch rows without CLS."""
    v = like.new_zeros(b, T)
    if cls is not None:
        v[:, cls] = 1.0
    else:
        v[:, P:] = 1.0 / (T - P)
    return v


def finish_map(m: torch.Tensor, drop: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, N]`` unnormalised patch part -> ``[B, gh, gw]`` summing to 1 (0 on excluded tokens)."""
    if drop is not None:
        m = m.masked_fill(drop.to(m.device), 0.0)
    m = m / m.sum(dim=-1, keepdim=True)
    return m.reshape(m.shape[0], *grid)


def _token_rollout(attn: list[torch.Tensor], head_fusion: str, discard_ratio: float, P: int, cls: int | None,
                   drop: torch.Tensor | None) -> torch.Tensor:
    """Token-level rollout of one chunk of images: ``attn`` is every layer's ``[b, H, T, T]``.

    Returns the unnormalised ``[b, T - P]`` patch part of R's CLS row (or mean patch row).
    """
    # Only one row of R is needed (the CLS row, or the mean of the patch rows), so it is
    # computed as a row vector pushed down from the last layer, v <- v·Â_l: O(L·T²) per
    # image instead of the O(L·T³) of forming R = Â_L ··· Â_1; the result is identical.
    v = None
    for layer_attn in reversed(attn):
        a = fused_layer(layer_attn, head_fusion, discard_ratio, P, cls, drop)
        if v is None:
            v = readout_vector(a.shape[0], a.shape[-1], P, cls, a)
        v = residual_step(a, v, left=False)
    assert v is not None
    return v[:, P:]


@renamed(head_fusion="head")
def rollout(cache: AttentionCache, head: str = "mean", discard_ratio: float = 0.0,
            exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Attention rollout map.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
    https://arxiv.org/abs/2005.00928. Per layer ``l`` (DESIGN.md §4):

    1. fuse heads: ``A_l = mean_h A_l[h]`` (or max/min);
    2. optionally set to 0 the lowest ``discard_ratio`` fraction of the entries outside
       the CLS column (per image, per layer);
    3. ``Â_l = 0.5·A_l + 0.5·I`` (the residual connection), rows renormalised to sum 1;
    4. ``R = Â_L ··· Â_1`` (multiplied from the first layer up).

    The map is ``R[cls, prefix:]`` renormalised to sum to 1. A model without CLS token
    uses the mean of R's patch rows, ``mean_i R[i, prefix:]`` over patch rows i. Only
    that one row of R is ever needed, so it is computed as a row vector pushed down
    from the last layer (``v ← v·Â_l``, ``O(L·T²)`` per image), never forming the
    ``T x T`` products.

    Windowed hierarchical models (Swin, SwinV2; ``docs/swin.md``): steps 1-3 run on each
    block's dense matrix in its stage's coordinates (``cache.dense_attention(l)``, shift
    undone, padding cropped); step 2's candidates are the entries the block could attend
    (query and key real tokens of the same window and shift-mask region). Within stage
    ``s`` the product runs from the stage's first block up, ``R_s = Â_last ··· Â_first``;
    patch merging maps stage ``s`` to stage ``s+1`` by averaging the merged tokens,
    ``M_s[t', t] = 1/|G(t')|`` for the stage-``s`` tokens ``t`` in the 2x2 group
    ``G(t')`` that token ``t'`` merges (fewer at an odd grid's edge, where timm pads), so

        ``R = R_{S-1} · M_{S-2} · R_{S-2} ··· M_0 · R_0``   (``[N_last, N_0]``)

    and the map is the mean of R's rows (the average-pooled output tokens the head
    reads), ``mean_i R[i, :]``, renormalised to sum 1, on the first stage's grid. It is
    computed as a row vector pushed down through the chain (``O(N·n)`` per block on
    the windows), never forming the ``N x N`` products.

    ``exclude`` (e.g. :func:`vitlens.high_norm_tokens`' ``mask``, Darcet et al. 2023)
    removes patch tokens as routes of information: in every layer their key columns of
    the fused ``A_l`` are set to 0 after step 2, like discarded entries (their own
    residual ``0.5·I`` stays), before the rows are renormalised; the final map is 0 on
    them and renormalised over the rest.

    Args:
        cache: captured with ``rows="all"`` and every layer from 0 up to the last one
            to include (normally all layers; windowed models need every layer).
        head: how heads are fused, ``"mean"`` | ``"max"`` | ``"min"`` (rollout has no
            per-head form; ``head_fusion=`` is the deprecated name of this argument).
        discard_ratio: in ``[0, 1)``.
        exclude: optional ``[B, gh, gw]`` bool, patch tokens to leave out (token-level
            models only).

    Returns:
        ``[B, gh, gw]`` float32 maps, each summing to 1 (windowed models: the first
        stage's grid, ``cache.layout.grid_size``).
    """
    if head not in HEAD_FUSIONS:
        raise ValueError(f"rollout fuses the heads of every layer: head must be one of {HEAD_FUSIONS}, got {head!r}; "
                         f"for per-head maps use vitlens.cls_attention(cache, head=None)")
    head_fusion = head
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if cache.rows != "all":
        raise ValueError("rollout needs the full T x T attention; capture with rows='all' "
                         f"(this cache has rows={cache.rows!r})")
    reduced = reduction_of(cache, "rollout", head=head_fusion, discard_ratio=float(discard_ratio))
    if reduced is not None and exclude is None and reduced.ready():   # captured with reduce=["rollout", ...]
        return reduced.maps()
    if cache.windowed:
        if exclude is not None:
            raise ValueError("rollout(exclude=...) needs a token-level model: a windowed (Swin) model's tokens "
                             "are merged between stages, so first-stage exclusions have no per-layer meaning")
        return _windowed_rollout(cache, head_fusion, discard_ratio)
    layers = cache.layers
    if layers != list(range(len(layers))):
        raise ValueError(f"rollout multiplies every layer from layer 0 up; this cache recorded "
                         f"layers {layers}. Capture with layers=None (all layers)")
    cache.require_token_attention("rollout")
    parallel = [s for s in (cache.spec(i) for i in layers) if s is not None and s.branch_of is not None]
    if parallel:
        raise ValueError(
            f"rollout multiplies the layers in sequence, but layer {parallel[0].index} ({parallel[0].hook_point}) "
            f"of {cache.model_name} is a parallel attention branch: it reads the same block input as layer "
            f"{parallel[0].branch_of}, so the product of their matrices is not how information flows. "
            f"Use per-layer maps (cls_attention) or a model with sequential blocks")
    layout = cache.layout
    if layout is None:
        cache.attention(layers[0])  # raises the "nothing was recorded" error
    assert layout is not None
    P, cls = layout.num_prefix_tokens, layout.cls_index
    drop = None
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.dtype != torch.bool or exclude.dim() != 3 \
                or tuple(exclude.shape[1:]) != tuple(layout.grid_size):
            raise ValueError(f"exclude must be a [B, gh, gw] = [B, {layout.grid_size[0]}, {layout.grid_size[1]}] bool "
                             f"tensor (e.g. high_norm_tokens(...).mask), got "
                             f"{getattr(exclude, 'dtype', type(exclude).__name__)} "
                             f"{tuple(getattr(exclude, 'shape', ()))}")
        drop = exclude.reshape(exclude.shape[0], -1)
        if drop.all(dim=1).any():
            raise ValueError("exclude leaves no patch token for some image; exclude fewer tokens")
    attn = [cache.attention(layer) for layer in layers]
    B, T = attn[0].shape[0], attn[0].shape[-1]
    if drop is not None and drop.shape[0] != B:
        raise ValueError(f"exclude has {drop.shape[0]} images, the cache {B}; pass one mask per captured image")
    # Images are independent: on the CPU take them a few at a time, so each layer's
    # head-fused [chunk, T, T] matrix stays in the CPU cache between being made and being
    # used (64 ViT-B images, 2 cores: 1.45x faster than whole-batch tensors, median of 21
    # paired rounds), and a float16 cache is widened to float32 one chunk at a time.
    step = max(1, _CHUNK_BYTES // (T * T * 4)) if attn[0].device.type == "cpu" else max(B, 1)
    m = torch.cat([_token_rollout([a[s:s + step] for a in attn], head_fusion, discard_ratio, P, cls,
                                  None if drop is None else drop[s:s + step])
                   for s in range(0, max(B, 1), step)])
    return finish_map(m, drop, layout.grid_size)


def discard_lowest_allowed(fused: torch.Tensor, allowed: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Windowed :func:`discard_lowest`: zero the lowest ``discard_ratio`` fraction of the allowed entries.

    Args:
        fused: ``[B, nW, n, n]`` head-fused windowed attention.
        allowed: ``[nW, n, n]`` bool, the candidate entries (real tokens, same region).
        discard_ratio: fraction in ``[0, 1)`` of the candidates to set to 0, per image.
    """
    if discard_ratio <= 0:
        return fused
    cand = fused[:, allowed]  # [B, P]
    k = int(discard_ratio * cand.shape[-1])
    if k == 0:
        return fused
    out = fused.clone()
    out[:, allowed] = cand.masked_fill(_zero_lowest(cand, k), 0.0)
    return out


def _merge_rows_to_previous(v: torch.Tensor, grid: tuple[int, int], prev: tuple[int, int]) -> torch.Tensor:
    """``v · M``: a row vector over stage ``s+1`` (grid ``grid``) -> over stage ``s`` (grid ``prev``).

    ``M[t', t] = 1/|G(t')|`` for the stage-``s`` tokens ``t`` in the 2x2 group ``G(t')``
    merged into ``t'`` (identity when the grid did not change).
    """
    if grid == prev:
        return v
    (h, w), (ph, pw) = grid, prev
    if (h, w) != ((ph + 1) // 2, (pw + 1) // 2):
        raise ValueError(f"stage grid {grid} does not follow from {prev} by 2x2 patch merging; "
                         f"rollout cannot carry relevance between these stages")
    ys = torch.arange(ph, device=v.device) // 2
    xs = torch.arange(pw, device=v.device) // 2
    parent = (ys[:, None] * w + xs[None, :]).reshape(-1)                       # [N_prev]
    gy = (torch.clamp(2 * torch.arange(h, device=v.device) + 2, max=ph) - 2 * torch.arange(h, device=v.device))
    gx = (torch.clamp(2 * torch.arange(w, device=v.device) + 2, max=pw) - 2 * torch.arange(w, device=v.device))
    size = (gy[:, None] * gx[None, :]).reshape(-1).to(v.dtype)                 # |G(t')|
    return (v / size)[:, parent]


def windowed_fused_layer(attn: torch.Tensor, window: WindowLayout, head: str,
                         discard_ratio: float) -> torch.Tensor:
    """Steps 1-2 of rollout for one windowed block: ``[B, nW, h, n, n]`` -> fused ``[B, nW, n, n]``
    float32, padding keys and cross-region pairs 0, lowest allowed entries discarded."""
    a = fuse_heads(attn.float(), head, dim=2)   # [B, nW, n, n]
    allowed = window.allowed_pairs(a.device)
    a = a * allowed                                     # padding keys cropped, masked pairs 0
    return discard_lowest_allowed(a, allowed, discard_ratio)


def windowed_chain(fused_of: Callable[[int], torch.Tensor], windows: Sequence[WindowLayout],
                   grid: tuple[int, int]) -> torch.Tensor:
    """Step 4 for windowed models: the mean row of ``R_{S-1}·M_{S-2}···M_0·R_0`` pushed down from the
    last block, ``fused_of(layer)`` giving each block's fused ``A_l`` (:func:`windowed_fused_layer`);
    ``[B, gh, gw]`` on the first stage's ``grid``, summing to 1."""
    v = None
    here = windows[-1].grid_size
    for wl in reversed(windows):
        if wl.grid_size != here:                        # crossed a patch merging, going down
            v = _merge_rows_to_previous(v, here, wl.grid_size)
            here = wl.grid_size
        a = fused_of(wl.layer)
        if v is None:                                   # mean over the pooled last-stage tokens
            v = a.new_full((a.shape[0], wl.num_tokens), 1.0 / wl.num_tokens)
        v = from_windows(residual_step(a, to_windows(v, wl), left=False), wl)
    assert v is not None
    v = _merge_rows_to_previous(v, here, grid)
    v = v / v.sum(dim=-1, keepdim=True)
    return v.reshape(v.shape[0], *grid)


def _windowed_rollout(cache: AttentionCache, head_fusion: str, discard_ratio: float) -> torch.Tensor:
    layers = cache.layers
    if layers != list(range(cache.num_layers)):
        raise ValueError(f"rollout of a windowed (Swin) model needs every layer: it runs through every stage "
                         f"to the pooled output; "
                         f"this cache recorded layers {layers} of {cache.num_layers}. "
                         f"Capture with layers=None (all layers)")
    layout = cache.layout
    assert layout is not None
    windows: list[WindowLayout] = [cache.layout_of(i) for i in layers]  # type: ignore[misc]
    return windowed_chain(lambda layer: windowed_fused_layer(cache.attention(layer), windows[layer], head_fusion,
                                                             discard_ratio),
                          windows, layout.grid_size)
