"""What a capture recorded (:class:`AttentionCache`) and its token geometry (:class:`TokenLayout`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
        assert len(self.prefix_names) == self.num_prefix_tokens, (self.prefix_names, self.num_prefix_tokens)

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


@dataclass
class AttentionCache:
    """Attention probabilities recorded by :func:`vitlens.capture`.

    Every forward call inside the ``with`` block appends its batch, so a loop over
    batches inside one block gives one cache over all images (all calls must share one
    input size). Tensors are detached (unless captured with ``grad=True``) and live on
    the model's device unless ``to=`` said otherwise.

    Attributes:
        model_name: the model's class name (and timm name when known).
        family: the adapter family that recorded it, e.g. ``"VisionTransformer"``.
        num_layers: attention layers in the model (not only the recorded ones).
        num_heads: heads per layer in the model.
        layers: recorded layer indices, ascending, non-negative.
        heads: recorded head indices (all heads unless ``heads=`` was given).
        rows: ``"all"`` (``[B, heads, T, T]``) or ``"prefix"`` (only the prefix-token
            query rows, ``[B, heads, P, T]``).
        hook_points: layer index -> timm module path it was recorded from
            (e.g. ``3 -> "blocks.3.attn"``).
        layout: the :class:`TokenLayout`; None until a forward ran.
    """

    model_name: str
    family: str
    num_layers: int
    num_heads: int
    layers: list[int]
    heads: tuple[int, ...]
    rows: str
    hook_points: dict[int, str]
    layout: TokenLayout | None = None
    _store: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- access
    def resolve_layer(self, layer: int) -> int:
        """Turn a possibly negative layer index into ``0..num_layers-1`` or raise ValueError."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
        n = self.num_layers
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range for this {n}-layer model; "
                             f"valid layers are 0..{n - 1} (or -{n}..-1 counting from the end)")
        return layer % n

    def resolve_head(self, head: int) -> int:
        """Position of model head ``head`` (negative counts from the end) in the recorded tensor."""
        if isinstance(head, bool) or not isinstance(head, int):
            raise TypeError(f"head must be an int, got {type(head).__name__} {head!r}")
        n = self.num_heads
        if not -n <= head < n:
            raise ValueError(f"head {head} is out of range: the model has {n} heads per layer; "
                             f"valid heads are 0..{n - 1} (or -{n}..-1)")
        h = head % n
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
        """
        idx = self.resolve_layer(layer)
        if idx not in self._store or not self._store[idx]:
            if self.layout is None:
                raise ValueError("nothing was recorded: run the model inside the "
                                 "`with vitlens.capture(model) as cache:` block")
            raise ValueError(f"layer {idx} was not recorded (recorded layers: {self.layers}); "
                             f"pass layers=None (all) or include it in layers= when capturing")
        chunks = self._store[idx]
        if len(chunks) > 1:  # consolidate once, keep the result
            self._store[idx] = chunks = [torch.cat(chunks, dim=0)]
        return chunks[0]

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.attention(layer)

    @property
    def batch_size(self) -> int:
        """Images recorded so far (over every forward call)."""
        if not self.layers or self.layers[0] not in self._store:
            return 0
        return sum(t.shape[0] for t in self._store[self.layers[0]])

    def clear(self) -> None:
        """Drop every recorded tensor (keeps the configuration; the layout is reset)."""
        self._store.clear()
        self.layout = None

    # ---------------------------------------------------------------- recording
    def _set_layout(self, layout: TokenLayout) -> None:
        if self.layout is not None and self.layout != layout and self._store:
            raise ValueError(
                f"one capture holds one input geometry: the first forward had grid "
                f"{self.layout.grid_size} (input {self.layout.input_size}), this one "
                f"{layout.grid_size} (input {layout.input_size}); use a separate "
                f"`with vitlens.capture(...)` block per input size, or call cache.clear()")
        self.layout = layout

    def _record(self, layer: int, probs: torch.Tensor) -> None:
        self._store.setdefault(layer, []).append(probs)
