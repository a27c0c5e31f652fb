"""What an adapter says about a model before any forward: :class:`ModelDescription`.

The adapter is the one place that knows a model (timm or Hugging Face). Everything else in
vitlens -- analyses, batch export, shape bias, the CLI -- asks the adapter
(:func:`vitlens.capture.adapter_for`) or the cache for these facts instead of reading model
attributes or matching family names.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cache import TokenLayout, WindowLayout


@dataclass(frozen=True)
class LayerSpec:
    """One recordable attention layer.

    Attributes:
        index: layer index in forward order (across stages for hierarchical models).
        hook_point: module path it is recorded from, e.g. ``"blocks.3.attn"``.
        kind: ``"self"`` (token self-attention over the whole sequence), ``"window"``
            (self-attention inside windows: Swin, MaxViT's block attention, local
            blocks), ``"grid"`` (self-attention inside the dilated partitions of MaxViT's grid
            attention: window w holds every (H/g)-th row and (W/g)-th column token from
            offset w; ``num_queries``/``num_keys`` per partition), ``"class"`` (class-attention: only the
            class token queries, CaiT), ``"pool"`` (an attention-pool head whose queries
            are learned latents, SigLIP/MAP).
        heads: heads of this layer.
        stage: stage index (0 for flat models).
        shape: the recorded tensor's shape, in symbols (``"[B, H, T, T]"``).
        num_queries: query tokens per image (per window for ``"window"``).
        num_keys: key tokens per image (per window for ``"window"``); differs from
            ``num_queries`` for class-attention, pooling and spatial-reduction attention.
        softmax: the recorded weights are softmax probabilities (rows sum to 1).
        query_grid: patch grid ``(gh, gw)`` the query tokens sit on (after the
            ``query_prefix`` prefix tokens); None when the queries are not grid tokens
            (learned latents of a pooling head, class-attention).
        key_grid: the same for the keys (a coarser grid for spatial-reduction attention).
        query_prefix: prefix tokens before the query grid tokens.
        key_prefix: prefix tokens before the key grid tokens.
        stride: input pixels per grid token of this layer ``(ph, pw)``.
        branch_of: for parallel attention branches that read the same block input
            (timm's ``ParallelThingsBlock``), the index of the block's first branch
            layer; None for layers that run in sequence. Analyses that compose layers in
            sequence (rollout) refuse parallel branches.
    """

    index: int
    hook_point: str
    kind: str
    heads: int
    stage: int
    shape: str
    num_queries: int
    num_keys: int
    softmax: bool = True
    query_grid: tuple[int, int] | None = None
    key_grid: tuple[int, int] | None = None
    query_prefix: int = 0
    key_prefix: int = 0
    stride: tuple[int, int] | None = None
    branch_of: int | None = None

    @property
    def square(self) -> bool:
        """Queries and keys are the same token set (what rollout needs)."""
        return (self.kind in ("self", "window", "grid") and self.num_queries == self.num_keys
                and self.query_grid == self.key_grid)

    def on_layout(self, layout: TokenLayout) -> bool:
        """Token self-attention over exactly ``layout``'s sequence (prefix + patch grid)."""
        return (self.kind == "self" and self.query_grid == self.key_grid == layout.grid_size
                and self.query_prefix == self.key_prefix == layout.num_prefix_tokens)


@dataclass(frozen=True)
class ModelDescription:
    """Everything vitlens needs to know about a model for one input size.

    Attributes:
        family: adapter family name, e.g. ``"VisionTransformer"``.
        input_size: ``(H, W)`` in pixels this description is for.
        layout: token layout of the input sequence (first stage for hierarchical models).
        windows: one :class:`WindowLayout` per layer for windowed models, else ``()``.
        layers: every recordable attention layer, in forward order.
        gradcam_points: module paths :func:`vitlens.gradcam` reads, one per ``layer`` it
            accepts (blocks of a flat ViT, stages of a Swin).
        gradcam_kind: ``"tokens"`` (``[B, T, D]``), ``"nhwc"`` (``[B, H, W, C]``) or ``"nlc"`` (a
            stage's tokens ``[B, H_s * W_s, C]`` row-major, possibly the first element of a tuple).
        class_logits: the model's forward returns class logits. False for a model that returns
            tokens (a multimodal tower's encoder, ``*_enc``): what needs a prediction (explain,
            evaluate, shape bias, token importance, the ``logits`` export) refuses it.
    """

    family: str
    input_size: tuple[int, int]
    layout: TokenLayout
    windows: tuple[WindowLayout, ...]
    layers: tuple[LayerSpec, ...]
    gradcam_points: tuple[str, ...]
    gradcam_kind: str
    class_logits: bool = True

    @property
    def has_cls(self) -> bool:
        """The sequence has a class token (CLS maps are defined)."""
        return self.layout.has_cls

    @property
    def windowed(self) -> bool:
        """Attention runs inside windows (Swin): per-layer geometry in :attr:`windows`."""
        return bool(self.windows)

    @property
    def num_prefix_tokens(self) -> int:
        return self.layout.num_prefix_tokens

    def hook_points(self) -> dict[str, str]:
        """``{hook point: recorded shape}``, e.g. ``{"blocks.0.attn": "[B, H, T, T]"}``."""
        return {spec.hook_point: spec.shape for spec in self.layers}

    def __repr__(self) -> str:
        kinds = sorted({s.kind for s in self.layers})
        return (f"ModelDescription(family={self.family!r}, input_size={self.input_size}, "
                f"prefix={self.layout.prefix_names}, grid={self.layout.grid_size}, "
                f"layers={len(self.layers)} ({', '.join(kinds)}), windowed={self.windowed})")
