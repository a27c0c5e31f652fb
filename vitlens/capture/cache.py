"""What a capture recorded (:class:`AttentionCache`) and its token geometry (:class:`TokenLayout`,
and :class:`WindowLayout` per block of windowed-attention models such as Swin)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .._util import resolve_index

if TYPE_CHECKING:
    from .spec import LayerSpec, ModelDescription


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a ViT sequence comes from, read from the model, never guessed.

    The sequence is ``prefix tokens`` followed by the patch tokens in row-major order of
    the patch grid: token ``num_prefix_tokens + r * gw + c`` is the patch in grid row ``r``,
    column ``c``.

    Attributes:
        num_prefix_tokens: tokens before the patches (CLS, distillation, registers).
        prefix_names: one name per prefix token, in sequence order, e.g. ``("cls",)``,
            ``("cls", "dist")``, ``("cls", "reg", "reg", "reg", "reg")``; ``()`` for
            global-pool models without a class token.
        grid_size: patch grid ``(gh, gw)`` of *this* input (dynamic-size models included).
        patch_size: patch ``(ph, pw)`` in input pixels.
        input_size: input ``(H, W)`` in pixels, after preprocessing.
    """

    num_prefix_tokens: int
    prefix_names: tuple[str, ...]
    grid_size: tuple[int, int]
    patch_size: tuple[int, int]
    input_size: tuple[int, int]

    def __post_init__(self) -> None:
        if len(self.prefix_names) != self.num_prefix_tokens:
            raise ValueError(f"prefix_names must name every prefix token: num_prefix_tokens="
                             f"{self.num_prefix_tokens}, got prefix_names={self.prefix_names!r}")
        for name in ("grid_size", "patch_size", "input_size"):
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(i, int) and i > 0 for i in v)):
                raise ValueError(f"{name} must be a tuple of two positive ints, got {v!r}")

    @property
    def num_patches(self) -> int:
        """Number of patch tokens, ``gh * gw``."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        """Sequence length T = prefix tokens + patches."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def cls_index(self) -> int | None:
        """Sequence index of the class token, or None for CLS-free models."""
        return self.prefix_names.index("cls") if "cls" in self.prefix_names else None

    @property
    def has_cls(self) -> bool:
        return self.cls_index is not None

    def patch_centers(self) -> torch.Tensor:
        """``[num_patches, 2]`` (y, x) centres of the patches in input pixels, row-major."""
        (gh, gw), (ph, pw) = self.grid_size, self.patch_size
        ys = (torch.arange(gh, dtype=torch.float32) + 0.5) * ph
        xs = (torch.arange(gw, dtype=torch.float32) + 0.5) * pw
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)


@dataclass(frozen=True)
class WindowLayout:
    """Geometry of one windowed-attention block (Swin / SwinV2), read from the model.

    A block of stage ``stage`` sees the stage grid ``grid_size = (H, W)`` (row-major; token
    ``y * W + x``). timm rolls the grid by ``-shift_size`` (cyclic shift), pads it at the
    bottom/right with zeros to ``padded_size`` (multiples of the window), and cuts it into
    ``num_windows`` windows of ``window_size = (wh, ww)``, numbered row-major; inside a
    window, position ``p = i * ww + j``. So window ``(wr, wc)``, position ``(i, j)`` holds
    the stage token ``((wr*wh + i + sh) % H, (wc*ww + j + sw) % W)``, or padding when
    ``wr*wh + i >= H`` or ``wc*ww + j >= W``. See ``docs/swin.md``.

    Attributes:
        layer: layer index (forward order across stages).
        stage: stage index (``model.layers[stage]``).
        grid_size: stage grid ``(H, W)`` in tokens, without padding.
        window_size: ``(wh, ww)`` as the block uses it (timm clamps it to the grid when
            the grid is smaller, and then uses no shift).
        shift_size: ``(sh, sw)`` cyclic shift; ``(0, 0)`` for regular windows.
        num_windows: windows per image, ``(Hp / wh) * (Wp / ww)``.
        patch_size: input pixels per stage token (effective stride), ``(ph, pw)``:
            the patch-embedding patch times 2 per patch merging before this stage.
        pad_then_shift: the block pads the grid first and rolls the *padded* grid
            (Hugging Face transformers' Swin and SwinV2) instead of rolling the stage grid
            and padding after it (timm). Then window ``(wr, wc)``, position ``(i, j)`` holds
            padded-grid cell ``((wr*wh + i + sh) % Hp, (wc*ww + j + sw) % Wp)``, padding
            when that row is ``>= H`` or column ``>= W``. The two orders agree without
            padding; the shift-mask regions are the same bands of the padded grid in both.
    """

    layer: int
    stage: int
    grid_size: tuple[int, int]
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    num_windows: int
    patch_size: tuple[int, int]
    pad_then_shift: bool = False

    def __post_init__(self) -> None:
        (hp, wp), (wh, ww) = self.padded_size, self.window_size
        if self.num_windows != (hp // wh) * (wp // ww):
            raise ValueError(f"num_windows={self.num_windows} does not fit grid {self.grid_size} cut into "
                             f"{self.window_size} windows ({(hp // wh) * (wp // ww)} windows)")

    @property
    def padded_size(self) -> tuple[int, int]:
        """``(Hp, Wp)``: the grid padded up to multiples of the window, as timm pads it."""
        (h, w), (wh, ww) = self.grid_size, self.window_size
        return (math.ceil(h / wh) * wh, math.ceil(w / ww) * ww)

    @property
    def window_grid(self) -> tuple[int, int]:
        """Windows per column and per row, ``(Hp / wh, Wp / ww)``."""
        (hp, wp), (wh, ww) = self.padded_size, self.window_size
        return (hp // wh, wp // ww)

    @property
    def window_area(self) -> int:
        """Tokens per window ``n = wh * ww`` (padding included)."""
        return self.window_size[0] * self.window_size[1]

    @property
    def num_tokens(self) -> int:
        """Stage tokens ``H * W`` (padding excluded)."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def shifted(self) -> bool:
        return any(self.shift_size)

    def token_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[num_windows, n]`` long: stage token index ``y * W + x`` at each window position, -1 for padding."""
        (h, w), (wh, ww), (sh, sw) = self.grid_size, self.window_size, self.shift_size
        (hp, wp) = self.padded_size
        ys = torch.arange(hp, device=device).view(-1, 1).expand(hp, wp)   # shifted, padded coordinates
        xs = torch.arange(wp, device=device).view(1, -1).expand(hp, wp)
        if self.pad_then_shift:  # roll of the padded grid: padding moves with the shift
            yy, xx = (ys + sh) % hp, (xs + sw) % wp
            idx = torch.where((yy < h) & (xx < w), yy * w + xx, torch.full_like(ys, -1))
        else:  # roll of the stage grid, then padding at the bottom/right
            idx = ((ys + sh) % h) * w + (xs + sw) % w
            idx = torch.where((ys < h) & (xs < w), idx, torch.full_like(idx, -1))
        nwh, nww = self.window_grid
        return idx.reshape(nwh, wh, nww, ww).permute(0, 2, 1, 3).reshape(nwh * nww, wh * ww)

    def region_labels(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[num_windows, n]`` long: the region of timm's shift mask at each window position.

        Reproduces ``SwinTransformerBlock.get_attn_mask``: on the padded, shifted grid the rows
        ``[0, Hp-wh)``, ``[Hp-wh, Hp-sh)``, ``[Hp-sh, Hp)`` times the same column bands are
        regions 0..8; a query attends only keys of its own region. All 0 without shift.
        """
        (hp, wp), (wh, ww), (sh, sw) = self.padded_size, self.window_size, self.shift_size
        img = torch.zeros(hp, wp, dtype=torch.long, device=device)
        if self.shifted:
            cnt = 0
            for h0, h1 in ((0, -wh), (-wh, -sh), (-sh, None)):
                for w0, w1 in ((0, -ww), (-ww, -sw), (-sw, None)):
                    img[h0:h1, w0:w1] = cnt
                    cnt += 1
        nwh, nww = self.window_grid
        return img.reshape(nwh, wh, nww, ww).permute(0, 2, 1, 3).reshape(nwh * nww, wh * ww)

    def allowed_pairs(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[num_windows, n, n]`` bool: query and key are real tokens (not padding) of the same region."""
        real = self.token_index(device) >= 0
        lab = self.region_labels(device)
        return real[:, :, None] & real[:, None, :] & (lab[:, :, None] == lab[:, None, :])


def windows_to_dense(attn: torch.Tensor, window: WindowLayout) -> torch.Tensor:
    """Place windowed attention in stage coordinates, cyclic shift undone, padding cropped.

    Args:
        attn: ``[B, num_windows, heads, n, n]`` as recorded for a windowed block.
        window: that block's :class:`WindowLayout`.

    Returns:
        ``[B, heads, N, N]`` with ``N = H * W`` (row-major stage grid): entry ``[q, k]`` is the
        probability query token q gave key token k in this block; 0 for pairs in different
        windows. Attention on timm's zero padding tokens is not in the matrix.
    """
    B, nw, heads, n, _ = attn.shape
    N = window.num_tokens
    idx = window.token_index(attn.device)
    real = idx >= 0
    pair = real[:, :, None] & real[:, None, :]
    flat = (idx[:, :, None] * N + idx[:, None, :])[pair]
    out = attn.new_zeros(B, heads, N * N)
    out[:, :, flat] = attn.permute(0, 2, 1, 3, 4)[..., pair]
    return out.reshape(B, heads, N, N)


def to_windows(values: torch.Tensor, window: WindowLayout) -> torch.Tensor:
    """``[..., N]`` per stage token -> ``[..., num_windows, n]`` per window position (0 at padding)."""
    idx = window.token_index(values.device)
    out = values[..., idx.clamp_min(0)]
    return out * (idx >= 0).to(out.dtype)


def from_windows(values: torch.Tensor, window: WindowLayout) -> torch.Tensor:
    """``[..., num_windows, n]`` per window position -> ``[..., N]`` per stage token (padding dropped).

    Every stage token sits at exactly one window position, so this inverts :func:`to_windows`.
    """
    idx = window.token_index(values.device)
    real = idx >= 0
    out = values.new_zeros(*values.shape[:-2], window.num_tokens)
    out[..., idx[real]] = values[..., real]
    return out


@dataclass(eq=False, repr=False)
class AttentionCache(Mapping):
    """Attention probabilities recorded by :func:`vitlens.capture`.

    A read-only mapping from hook point name to the recorded tensor, in forward order::

        list(cache)              # ["blocks.0.attn", "blocks.1.attn", ...] (recorded layers)
        cache["blocks.3.attn"]   # [B, heads, T, T] -- the same tensor as cache.attention(3)
        cache[3], cache[-1]      # integer layer indices work too (negative from the end)
        "blocks.0.attn" in cache, len(cache)

    Shapes per hook point: ``[B, heads, T, T]`` for token self-attention (``[B, heads, P,
    T]`` with ``rows="prefix"``), ``[B, num_windows, heads, n, n]`` for windowed layers;
    ``cache.spec(layer).shape`` and ``cache.description.hook_points()`` say which.

    Every forward call inside the ``with`` block appends its batch, so a loop over
    batches inside one block gives one cache over all images (all calls must share one
    input size). Tensors are detached (unless captured with ``grad=True``) and live on
    the model's device unless ``to=`` said otherwise.

    Attributes:
        model_name: the model's class name (and timm name when known).
        family: the adapter family that recorded it, e.g. ``"VisionTransformer"``.
        num_layers: attention layers in the model (not only the recorded ones); for
            hierarchical models (Swin) numbered in forward order across stages.
        num_heads: heads per layer in the model; the largest count when it varies by
            layer (Swin stages), see ``layer_heads``.
        layers: recorded layer indices, ascending, non-negative.
        heads: recorded head indices (all heads unless ``heads=`` was given).
        rows: ``"all"`` (``[B, heads, T, T]``) or ``"prefix"`` (only the prefix-token
            query rows, ``[B, heads, P, T]``).
        hook_points: layer index -> timm module path it was recorded from
            (e.g. ``3 -> "blocks.3.attn"``, ``5 -> "layers.2.blocks.1.attn"``).
        layer_heads: heads of every model layer (``()`` when all have ``num_heads``).
        layout: the :class:`TokenLayout`; None until a forward ran. For windowed models
            (Swin) it describes the *first* stage's grid, with no prefix tokens: maps
            over the whole model (rollout) come out on that grid.
        reductions: the :class:`~vitlens.capture.reduce.Reduction` objects fed during the
            forward (``capture(reduce=...)``); the analyses read their results.
        kept: recorded layers whose full tensors are stored; None = every recorded layer
            (a plain capture). ``capture(reduce=...)`` keeps none unless ``keep=`` asks.
    """

    model_name: str
    family: str
    num_layers: int
    num_heads: int
    layers: list[int]
    heads: tuple[int, ...]
    rows: str
    hook_points: dict[int, str]
    layer_heads: tuple[int, ...] = ()
    layout: TokenLayout | None = None
    reductions: list = field(default_factory=list, repr=False)
    kept: tuple[int, ...] | None = None
    _store: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)
    _windows: dict[int, WindowLayout] = field(default_factory=dict, repr=False)
    _describe: Callable[[tuple[int, int]], "ModelDescription"] | None = field(default=None, repr=False)
    _description: "ModelDescription | None" = field(default=None, repr=False)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_tensors(cls, attention: Sequence[torch.Tensor], layout: TokenLayout, *,
                     model_name: str = "tensors") -> "AttentionCache":
        """A cache over attention computed elsewhere, so every analysis applies to it.

        For token-level models (one ``[B, heads, T, T]`` matrix per layer); e.g.
        probabilities from a model vitlens has no adapter for, or saved to disk.

        Example::

            layout = vitlens.TokenLayout(1, ("cls",), (14, 14), (16, 16), (224, 224))
            cache = vitlens.AttentionCache.from_tensors([a0, a1, ...], layout)
            vitlens.rollout(cache)

        Args:
            attention: per layer, from the first, ``[B, heads, T, T]`` probabilities with
                ``T = layout.num_prefix_tokens + gh * gw``.
            layout: the token geometry of the input.
            model_name: recorded as :attr:`model_name`.
        """
        attention = list(attention)
        if not attention:
            raise ValueError("from_tensors needs at least one layer of attention")
        T = layout.num_prefix_tokens + layout.num_patches
        first = attention[0]
        for i, a in enumerate(attention):
            if not isinstance(a, torch.Tensor) or a.dim() != 4 or a.shape[-2:] != (T, T) \
                    or a.shape[:2] != first.shape[:2]:
                raise ValueError(f"layer {i}: expected a [B, heads, T, T] tensor with T = {T} "
                                 f"({layout.num_prefix_tokens} prefix + {layout.num_patches} patches) and the "
                                 f"same B and heads as layer 0 {tuple(first.shape[:2])}, got "
                                 f"{tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__}")
        cache = cls(model_name=model_name, family="tensors", num_layers=len(attention), num_heads=first.shape[1],
                    layers=list(range(len(attention))), heads=tuple(range(first.shape[1])), rows="all",
                    hook_points={i: f"layers.{i}" for i in range(len(attention))})
        cache._set_layout(layout)
        for i, a in enumerate(attention):
            cache._record(i, a)
        return cache

    # ----------------------------------------------------------------- access
    def resolve_layer(self, layer: int) -> int:
        """Turn a possibly negative layer index into ``0..num_layers-1`` or raise ValueError."""
        return resolve_index(layer, self.num_layers, "layer")

    def resolve_head(self, head: int) -> int:
        """Position of model head ``head`` (negative counts from the end) in the recorded tensor."""
        n = self.num_heads
        h = resolve_index(head, n, "head", detail=f"the model has {n} heads per layer")
        if h not in self.heads:
            raise ValueError(f"head {h} was not recorded (recorded heads: {list(self.heads)}); "
                             f"capture with heads=None to record every head")
        return self.heads.index(h)

    def attention(self, layer: int = -1) -> torch.Tensor:
        """Attention probabilities of one layer.

        Args:
            layer: layer index; negative counts from the model's last layer.

        Returns:
            ``[B, heads, T, T]`` (query rows, key columns, T = prefix + patches, in the
            model's token order), or ``[B, heads, P, T]`` when captured with
            ``rows="prefix"``. ``heads`` are the recorded heads (see ``self.heads``).
            Windowed models (Swin): ``[B, num_windows, heads, n, n]`` per window of the
            shifted, padded stage grid (``n = wh * ww``; geometry in
            :meth:`layout_of`, stage coordinates from :meth:`dense_attention`).
        """
        idx = self.resolve_layer(layer)
        if idx not in self._store or not self._store[idx]:
            if self.layout is None:
                raise ValueError("nothing was recorded: run the model inside the "
                                 "`with vitlens.capture(model) as cache:` block")
            if idx in self.layers and self.kept is not None and idx not in self.kept:
                raise ValueError(f"layer {idx} was recorded into reductions only (reductions: {self.reductions}; "
                                 f"full tensors kept for layers {list(self.kept)}); capture with keep=True "
                                 f"(or keep=[{idx}, ...]) to keep its full attention")
            raise ValueError(f"layer {idx} was not recorded (recorded layers: {self.layers}); "
                             f"pass layers=None (all) or include it in layers= when capturing")
        chunks = self._store[idx]
        if len(chunks) > 1:  # consolidate once, keep the result
            self._store[idx] = chunks = [torch.cat(chunks, dim=0)]
        return chunks[0]

    def __getitem__(self, key: int | str) -> torch.Tensor:
        """``cache["blocks.3.attn"]`` (hook point) or ``cache[3]`` (layer index)."""
        if isinstance(key, str):
            for layer, path in self.hook_points.items():
                if path == key and layer in self.layers:
                    return self.attention(layer)
            raise KeyError(f"{key!r} is not a recorded hook point; recorded: {list(self)}")
        return self.attention(key)

    def __iter__(self) -> Iterator[str]:
        """Hook point names of the recorded layers, in forward order."""
        return iter(self.hook_points[i] for i in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    # identity, not Mapping's item-wise comparison (tensors have no single truth value)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return any(self.hook_points.get(i) == key for i in self.layers)
        if isinstance(key, int) and not isinstance(key, bool):
            return -self.num_layers <= key < self.num_layers and key % self.num_layers in self.layers
        return False

    def __repr__(self) -> str:
        geo = (f"grid={self.layout.grid_size}, prefix={self.layout.prefix_names}" if self.layout is not None
               else "nothing recorded yet")
        shape = (tuple(self.attention(self.layers[-1]).shape) if self.layout is not None
                 and self.layers[-1] in self._store else None)
        return (f"AttentionCache({self.model_name!r}, family={self.family!r}, layers={len(self.layers)}/"
                f"{self.num_layers}, heads={len(self.heads)}/{self.num_heads}, rows={self.rows!r}, {geo}"
                + (f", last layer {list(shape)}" if shape else "") + ")")

    @property
    def description(self) -> "ModelDescription | None":
        """The adapter's :class:`~vitlens.capture.spec.ModelDescription` for the recorded input size.

        None for caches built from tensors (:meth:`from_tensors`) and before a forward ran.
        """
        if self._description is None and self._describe is not None and self.layout is not None:
            self._description = self._describe(self.layout.input_size)
        return self._description

    def spec(self, layer: int) -> "LayerSpec | None":
        """The :class:`~vitlens.capture.spec.LayerSpec` of one layer (kind, hook point, query/key tokens)."""
        d = self.description
        return None if d is None else d.layers[self.resolve_layer(layer)]

    def require_token_attention(self, what: str, layers: Sequence[int] | None = None) -> None:
        """Raise ValueError unless the layers are square self-attention over :attr:`layout`.

        For analyses defined on ``[B, H, T, T]`` matrices over one token sequence (CLS maps,
        token rollout, distances, attention received). Windowed layers with a Swin
        :class:`WindowLayout` have their own paths in those analyses and pass; windows of
        other geometry (MaxViT's grid partitions, local blocks without a WindowLayout), class-attention, pooling heads and layers whose
        queries and keys sit on other grids (spatial reduction, hierarchical stages) are
        refused with the reason.
        """
        d = self.description
        if d is None or self.layout is None:
            return
        for i in (self.layers if layers is None else layers):
            spec = d.layers[self.resolve_layer(i)]
            if not spec.softmax:
                raise ValueError(
                    f"{what} needs attention probabilities, but layer {spec.index} ({spec.hook_point}) of "
                    f"{self.model_name} records weights that are not softmax probabilities (rows need not sum "
                    f"to 1 or be positive, e.g. talking-heads attention mixes the heads after the softmax). "
                    f"Pass layers= without it, or read cache.attention(layer) directly")
            if (spec.kind == "window" and spec.index in self._windows) or spec.on_layout(self.layout):
                continue
            raise ValueError(
                f"{what} needs square token self-attention over the input's token layout "
                f"({self.layout.num_prefix_tokens} prefix + {self.layout.grid_size} patches); layer {spec.index} "
                f"({spec.hook_point}) of {self.model_name} is {spec.kind} attention with {spec.num_queries} "
                f"queries on grid {spec.query_grid} and {spec.num_keys} keys on grid {spec.key_grid}. "
                f"Pass layers= with layers of the input's token layout, or read cache.attention(layer) directly")

    @property
    def windowed(self) -> bool:
        """True when the model attends inside windows (Swin): see :meth:`layout_of`."""
        return bool(self._windows)

    def layout_of(self, layer: int) -> WindowLayout | TokenLayout:
        """Geometry of one layer.

        Returns:
            For windowed models (Swin) the layer's :class:`WindowLayout` (stage, stage grid,
            window, shift, number of windows, effective patch size); known for every
            layer once a forward ran, recorded or not. For flat models the
            :class:`TokenLayout` every layer shares (``self.layout``).
        """
        idx = self.resolve_layer(layer)
        if self.layout is None:
            raise ValueError("nothing was recorded: run the model inside the "
                             "`with vitlens.capture(model) as cache:` block")
        if not self._windows:
            return self.layout
        return self._windows[idx]

    def dense_attention(self, layer: int = -1) -> torch.Tensor:
        """Attention of one layer as a token-by-token matrix in the layer's own coordinates.

        Windowed models (Swin): the windowed tensor placed in stage coordinates with the
        cyclic shift undone, ``[B, heads, N, N]``, ``N = H * W`` of the stage grid
        (row-major, ``layout_of(layer).grid_size``); pairs in different windows (or
        different regions of a shifted window) are 0; timm's padding is cropped, so a row
        misses the (small) mass its query put on padding tokens. Memory grows as ``N²``
        (stage 0 of a 224-px Swin-T: 3136² per head and image, ~40 MB in float32).

        Flat models: the same as :meth:`attention`.
        """
        attn = self.attention(layer)
        if not self._windows:
            return attn
        return windows_to_dense(attn, self._windows[self.resolve_layer(layer)])

    @property
    def batch_size(self) -> int:
        """Images recorded so far (over every forward call)."""
        if not self.layers or self.layers[0] not in self._store:
            return 0
        return sum(t.shape[0] for t in self._store[self.layers[0]])

    def clear(self) -> None:
        """Drop every recorded tensor (keeps the configuration; the layout is reset)."""
        self._store.clear()
        for r in self.reductions:
            r.clear()
        self._windows.clear()
        self.layout = None
        self._description = None

    # ---------------------------------------------------------------- recording
    def _set_layout(self, layout: TokenLayout | WindowLayout) -> None:
        """Set the model-wide :class:`TokenLayout`, or one layer's :class:`WindowLayout`."""
        if isinstance(layout, WindowLayout):
            old = self._windows.get(layout.layer)
            if old is not None and old != layout and self._holds_data():
                raise ValueError(
                    f"one capture holds one input geometry: layer {layout.layer} had stage grid "
                    f"{old.grid_size} (window {old.window_size}) in the first forward, now "
                    f"{layout.grid_size} (window {layout.window_size}); use a separate "
                    f"`with vitlens.capture(...)` block per input size, or call cache.clear()")
            self._windows[layout.layer] = layout
            return
        if self.layout is not None and self.layout != layout and self._holds_data():
            raise ValueError(
                f"one capture holds one input geometry: the first forward had grid "
                f"{self.layout.grid_size} (input {self.layout.input_size}), this one "
                f"{layout.grid_size} (input {layout.input_size}); use a separate "
                f"`with vitlens.capture(...)` block per input size, or call cache.clear()")
        self.layout = layout

    def _holds_data(self) -> bool:
        return bool(self._store) or any(r.held_bytes() for r in self.reductions)

    def _record(self, layer: int, probs: torch.Tensor) -> None:
        self._store.setdefault(layer, []).append(probs)
