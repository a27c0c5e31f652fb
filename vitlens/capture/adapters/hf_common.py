"""Shared machinery for Hugging Face ``transformers`` vision models (the ``hf_*.py`` adapters).

Nothing here imports ``transformers``: adapters claim exact classes by their
``"module:QualName"`` strings, so vitlens imports and runs without the ``vitlens[hf]`` extra.

Mechanism (every HF family): a :class:`HFTap` (a ``TorchFunctionMode``, active for the
whole ``with vitlens.capture(...)`` block) sees the torch calls each recorded attention
module makes while it runs (a pre-hook marks the module as running, a forward hook
unmarks it):

- ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)`` --
  the call transformers' ``sdpa`` attention implementation makes (and BEiT-style
  ``*SdpaSelfAttention`` classes). q and k are the module's own projections after every
  reshape, ``attn_mask`` already holds whatever the model adds to q·kᵀ (BEiT's relative
  position bias, Swin's relative position bias plus the shift mask). Default path: the
  call goes through unchanged (the model keeps its fused kernel, outputs bit-identical)
  and ``softmax(q·kᵀ·scale + attn_mask)`` is computed beside it. ``grad=True``: the call
  is *replaced* by the same maths written out, ``P = softmax(q·kᵀ·scale + attn_mask)``,
  ``out = dropout(P) @ v``, and P is recorded -- the very tensor multiplied with v,
  attached to the graph. Outputs then equal the fused kernel's up to float rounding.
- ``softmax`` -- the eager path (``attn_implementation="eager"``, SwinV2, which always
  computes its probabilities, Data2VecVision's eager class): its output is recorded; it
  is the tensor the module multiplies with v (dropout is the identity in eval mode).

A recorded module that ran without either call (flash-attention, flex-attention or a
custom attention function) raises :class:`UnsupportedModelError` naming the module;
modules whose config names such an implementation are refused before any forward.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import Adapter, RecordFn
from .generic import ModuleTap, SdpaCall
from ..cache import TokenLayout, WindowLayout
from ...errors import UnsupportedModelError

_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}
#: Attention implementations whose probabilities vitlens can see.
RECORDABLE_IMPLEMENTATIONS = ("sdpa", "eager", None)

#: Called with (args, kwargs) of the intercepted call; returns a replacement result or None.
Handler = Callable[[tuple, dict], Any]


class HFTap(ModuleTap):
    """Sees the ``scaled_dot_product_attention`` or ``softmax`` call a watched module makes
    (:meth:`ModuleTap.watch`; ``handlers``: the SDPA handlers, ``softmax``: the softmax ones);
    a handler may return a replacement result."""

    what = "scaled_dot_product_attention or softmax"
    missing_hint = (" (an attention implementation other than 'sdpa' or 'eager'?); load the model with "
                    "attn_implementation='sdpa' or 'eager'")

    def __init__(self) -> None:
        super().__init__()
        self.softmax: dict[int, Callable[[torch.Tensor], torch.Tensor | None]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        layer = self.running
        if layer is not None and func is F.scaled_dot_product_attention:
            self.running = None  # the handler's own torch calls are not the model's
            try:
                self.seen += 1
                out = self.handlers[layer](args, kwargs)
            finally:
                self.running = layer
            return func(*args, **kwargs) if out is None else out
        out = func(*args, **kwargs)
        if layer is not None and func in _SOFTMAX:
            self.running = None
            try:
                self.seen += 1
                new = self.softmax[layer](out)
            finally:
                self.running = layer
            return out if new is None else new
        return out


def probs_with_graph(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None,
                     causal: bool) -> torch.Tensor:
    """``softmax(q·kᵀ·scale + mask)`` as transformers' eager path writes it (float32 softmax, back to
    q's dtype), differentiable (no in-place ops): the probabilities of the ``grad=True`` path."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)


def config_of(module: nn.Module) -> Any:
    return getattr(module, "config", None)


def attn_implementation(module: nn.Module) -> str | None:
    cfg = config_of(module)
    return getattr(cfg, "_attn_implementation", None) if cfg is not None else None


def check_implementation(path: str, module: nn.Module) -> None:
    """Refuse attention implementations whose probabilities never exist (flash, flex, custom)."""
    impl = attn_implementation(module)
    if impl not in RECORDABLE_IMPLEMENTATIONS:
        raise UnsupportedModelError(
            f"{path} runs transformers' {impl!r} attention implementation, which never forms the "
            f"probability matrix and whose inputs vitlens does not see; load the model with "
            f"attn_implementation='sdpa' (the default) or 'eager', or call "
            f"model.set_attn_implementation('sdpa')")


def pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def data_config_from_processor(processor: Any, input_hw: tuple[int, int]) -> dict[str, Any]:
    """Map a transformers image processor onto timm's eval transform (see :meth:`HFAdapter.data_config`)."""
    h, w = input_hw

    def field(obj: Any, key: str) -> Any:
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    size = getattr(processor, "size", None) or {}
    crop = getattr(processor, "crop_size", None) or {}
    mean = tuple(float(v) for v in (getattr(processor, "image_mean", None) or (0.0, 0.0, 0.0)))
    std = tuple(float(v) for v in (getattr(processor, "image_std", None) or (1.0, 1.0, 1.0)))
    if not getattr(processor, "do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = getattr(processor, "resample", 3)
    interp = _RESAMPLE.get(int(getattr(resample, "value", resample)), "bicubic")
    cropped = bool(getattr(processor, "do_center_crop", False)) and field(crop, "height")
    if field(size, "shortest_edge"):   # shortest edge resized, then (maybe) a centre crop
        side = int(field(crop, "height")) if cropped else h
        crop_pct, mode = min(1.0, side / float(field(size, "shortest_edge"))), "center"
    elif field(size, "height"):        # resized to height x width, then (maybe) a centre crop
        crop_pct = min(1.0, int(field(crop, "height")) / float(field(size, "height"))) if cropped else 1.0
        mode = "squash"
    else:
        crop_pct, mode = 1.0, "squash"
    return {"input_size": (3, int(h), int(w)), "interpolation": interp, "mean": mean, "std": std,
            "crop_pct": crop_pct, "crop_mode": mode}


class HFAdapter(Adapter):
    """Base of the transformers adapters: logits from the model output, labels from the config."""

    #: Exact classes of the backbone module (``ViTModel``, ...) found inside the claimed model.
    backbone_classes: tuple[str, ...] = ()
    token_drop_reason = ("it is a transformers model, and vitlens re-assembles the shortened token sequence "
                         "inside timm's forward only (not yet written for transformers' embeddings and heads)")

    def backbone(self) -> tuple[str, nn.Module]:
        """``(path, module)`` of the backbone (``""`` when the model is the backbone itself)."""
        return self.backbone_of(self.model)

    @classmethod
    def backbone_of(cls, model: nn.Module) -> tuple[str, nn.Module]:
        from . import class_path

        for path, m in model.named_modules():
            if class_path(m) in cls.backbone_classes:
                return path, m
        raise AttributeError(f"no backbone of class {cls.backbone_classes} in {type(model).__name__}")

    def prefixed(self, rel: str) -> str:
        path, _ = self.backbone()
        return f"{path}.{rel}" if path else rel

    def default_input_size(self) -> tuple[int, int]:
        return pair(self.backbone()[1].config.image_size)

    #: transformers image-processor class of the family, for :meth:`data_config` without a processor.
    image_processor: str = "ViTImageProcessor"
    #: Arguments for that class where the family's published processors differ from its defaults.
    processor_kwargs: dict[str, Any] = {}

    def data_config(self, processor: Any = None) -> dict[str, Any]:
        """vitlens' data config (timm's keys) from the model's image processor.

        Args:
            processor: the processor loaded with the model (``AutoImageProcessor``); None uses
                the family's processor class with its defaults (e.g. CLIP's mean/std).

        The input size is the model's (``config.image_size``); resize and crop follow the
        processor: ``do_center_crop`` with a shortest-edge resize -> ``crop_mode="center"``,
        ``crop_pct = crop / shortest_edge``; a resize to height x width -> ``"squash"``.
        """
        if processor is None:
            import transformers

            processor = getattr(transformers, self.image_processor)(**self.processor_kwargs)
        return data_config_from_processor(processor, self.default_input_size())

    def logits(self, output: object) -> torch.Tensor:
        """``output.logits`` of an ``ImageClassifierOutput``; backbones without a head are refused."""
        if isinstance(output, torch.Tensor):
            return output
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
        raise UnsupportedModelError(
            f"{type(self.model).__name__} has no classification head: it returns "
            f"{type(output).__name__} (embeddings, no class logits), so methods that explain or score a class "
            f"cannot run on it. Use the family's *ForImageClassification model (e.g. built from the same "
            f"config), or the attention analyses (cls_attention, rollout, distances), which need no logits")

    def class_names(self) -> list[str] | None:
        cfg = getattr(self.model, "config", None)
        labels = getattr(cfg, "id2label", None) or {}
        n = int(getattr(cfg, "num_labels", 0) or 0)
        if not labels or len(labels) != n:
            return None
        names = [str(labels[i]) for i in range(n)]
        if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
            return None  # transformers' placeholders, not names
        return names

    def grad_context(self, stack: ExitStack) -> None:
        """Also switch off transformers' ``gradient_checkpointing`` layers for the block (restored):
        a checkpointed layer would recompute its forward during backward, after the tap is gone."""
        super().grad_context(stack)
        for m in self.model.modules():
            if getattr(m, "gradient_checkpointing", False) is True:
                stack.callback(setattr, m, "gradient_checkpointing", True)
                m.gradient_checkpointing = False

    # ------------------------------------------------------------------ recording
    def _recorded_modules(self, layers: list[int]) -> list[tuple[int, str, nn.Module]]:
        modules = self.attention_modules()
        out = []
        for layer in layers:
            path, m = modules[layer]
            check_implementation(path, m)
            out.append((layer, path, m))
        return out

    def _install_tap(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                     rows: str, grad: bool, n_prefix: Callable[[int, int, str], int],
                     windows: Callable[[int], WindowLayout | None]) -> None:
        """Tap each recorded module's SDPA / softmax call (see the module docstring)."""
        head_index = None if heads is None else torch.tensor(heads)
        tap = HFTap()
        for layer, path, attn in self._recorded_modules(layers):
            state: dict[str, Any] = {}

            def select(p: torch.Tensor, dim: int) -> torch.Tensor:
                return p if head_index is None else p.index_select(dim, head_index.to(p.device))

            def shape_windows(p: torch.Tensor, layer: int, path: str) -> torch.Tensor:
                """``[B*nW, h, n, n]`` -> ``[B, nW, h, n, n]`` (a view), checked against the layout."""
                wl = windows(layer)
                assert wl is not None
                bw, _, n, n2 = p.shape
                nw = wl.num_windows
                if n != wl.window_area or n2 != n or bw % nw:
                    raise UnsupportedModelError(
                        f"{path} attended over {tuple(p.shape)} but the window layout predicts "
                        f"[B*{nw}, heads, {wl.window_area}, {wl.window_area}]; this model's forward differs "
                        f"from what vitlens expects")
                return p.reshape(bw // nw, nw, -1, n, n)

            def zero_masked(p: torch.Tensor, state: dict) -> torch.Tensor:
                """The shift mask adds -100 (not -inf): record masked pairs as exact zeros, like timm's Swin."""
                mask = state.get("mask")
                if mask is None:
                    return p
                nw, n = p.shape[1], p.shape[-1]
                return p.masked_fill((mask != 0).reshape(1, nw, 1, n, n), 0.0)

            def emit(p: torch.Tensor, layer: int, path: str, state: dict) -> torch.Tensor:
                """Record ``p`` (``[B, H, T, T]`` or ``[B*nW, h, n, n]``); return what the model goes on with."""
                if windows(layer) is not None:
                    w = shape_windows(p, layer, path)
                    rec = w if grad else zero_masked(w.detach(), state)
                    record(layer, select(rec, 2))
                    return w.reshape(p.shape)  # a view of the recorded tensor: gradients reach it
                P = n_prefix(layer, p.shape[-1], path)
                rec = p if grad else p.detach()
                if rows == "prefix":  # a copy: a view would keep the whole T x T matrix alive
                    rec = rec[:, :, :P].contiguous()
                record(layer, select(rec, 1))
                return p

            def on_sdpa(args: tuple, kwargs: dict, layer: int = layer, path: str = path,
                        state: dict = state) -> torch.Tensor | None:
                call = SdpaCall(args, kwargs)
                if grad:
                    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
                    bound = {**dict(zip(names, args)), **kwargs}
                    p = probs_with_graph(call.q, call.k, call.scale, call.mask, call.causal)
                    used = emit(p, layer, path, state)
                    drop = float(bound.get("dropout_p") or 0.0)
                    if drop:
                        used = F.dropout(used, drop, training=True)
                    return used @ bound["value"]
                if windows(layer) is not None:
                    emit(call.probs(), layer, path, state)
                    return None
                P = n_prefix(layer, call.num_keys, path)  # only the recorded heads' q, k (and mask)
                record(layer, call.probs(head_index, slice(0, P) if rows == "prefix" else slice(None)))
                return None

            def on_softmax(out: torch.Tensor, layer: int = layer, path: str = path,
                           state: dict = state) -> torch.Tensor | None:
                if state.get("softmaxes", 0):
                    raise UnsupportedModelError(
                        f"{path} computed more than one softmax in one forward; vitlens cannot tell which is "
                        f"the attention, so it refuses to record it")
                state["softmaxes"] = 1
                new = emit(out, layer, path, state)
                return new if new is not out else None

            def on_call(_m: nn.Module, args: tuple, kwargs: dict, state: dict = state) -> None:
                state.clear()
                state["mask"] = args[1] if len(args) > 1 else kwargs.get("attention_mask")

            tap.softmax[layer] = on_softmax
            stack.callback(attn.register_forward_pre_hook(on_call, with_kwargs=True).remove)
            tap.watch(stack, layer, path, attn, on_sdpa)
        tap.activate(stack)


class HFFlatAdapter(HFAdapter):
    """Flat HF ViTs: ``embeddings`` + a list of layers, each with one self-attention module.

    Subclasses set the relative paths inside the backbone: ``layers_path``
    (``"layers"``, ``"encoder.layer"``), ``attention_name`` (inside a layer),
    ``norm_name`` (the layer norm before the attention, Grad-CAM's point), and
    :meth:`prefix_names`.
    """

    layers_path: str = "layers"
    attention_name: str = "attention"
    norm_name: str = "layernorm_before"

    @classmethod
    def _layers(cls, model: nn.Module) -> tuple[str, nn.ModuleList]:
        path, bb = cls.backbone_of(model)
        mods = bb.get_submodule(cls.layers_path)
        return (f"{path}.{cls.layers_path}" if path else cls.layers_path), mods

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        base, layers = cls._layers(model)
        return [(f"{base}.{i}.{cls.attention_name}", layer.get_submodule(cls.attention_name))
                for i, layer in enumerate(layers)]

    def heads_of(self, layer: int) -> int:
        return int(self.backbone()[1].config.num_attention_heads)

    def prefix_names(self) -> tuple[str, ...]:  # pragma: no cover - per family
        raise NotImplementedError

    def patch_size(self) -> tuple[int, int]:
        return pair(self.backbone()[1].config.patch_size)

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        """Prefix tokens from the family, grid = input // patch (the patch convolution's stride, no padding)."""
        ph, pw = self.patch_size()
        names = self.prefix_names()
        return TokenLayout(num_prefix_tokens=len(names), prefix_names=names,
                           grid_size=(int(image_hw[0]) // ph, int(image_hw[1]) // pw),
                           patch_size=(ph, pw), input_size=(int(image_hw[0]), int(image_hw[1])))

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """The layer norm before each layer's attention (``[B, T, D]`` tokens, like timm's ``blocks.{i}.norm1``)."""
        base, layers = self._layers(self.model)
        return tuple(f"{base}.{i}.{self.norm_name}" for i in range(len(layers))), "tokens"

    def block_points(self) -> list[tuple[str, nn.Module]]:
        base, layers = self._layers(self.model)
        return [(f"{base}.{i}", layer) for i, layer in enumerate(layers)]

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None]) -> None:
        current: dict[str, TokenLayout] = {}
        _, bb = self.backbone()

        def on_image(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            pixels = args[0] if args else kwargs.get("pixel_values")
            layout = self.layout_for(tuple(pixels.shape[-2:]))
            current["layout"] = layout
            set_layout(layout)

        def n_prefix(_layer: int, n_tokens: int, path: str) -> int:
            layout = current.get("layout")
            if layout is None or layout.num_tokens != n_tokens:
                raise UnsupportedModelError(
                    f"{path} saw {n_tokens} tokens but the token layout predicts "
                    f"{layout.num_tokens if layout else 'none (the embeddings did not run)'}; "
                    f"this model's forward differs from what vitlens expects")
            return layout.num_prefix_tokens

        stack.callback(bb.embeddings.register_forward_pre_hook(on_image, with_kwargs=True).remove)
        self._install_tap(stack, layers, record, heads=heads, rows=rows, grad=grad, n_prefix=n_prefix,
                          windows=lambda _layer: None)


def hf_builder(config_cls: str, model_cls: str, **config: Any) -> Callable[..., nn.Module]:
    """A tiny random-init transformers model for the oracle tests: ``builder(attn_implementation=None)``.

    ``None`` builds the model with its default implementation (sdpa where the family has
    it); the same seed gives the same weights for every implementation, so the
    ``"eager"`` twin is the oracle's reference.
    """
    def build(attn_implementation: str | None = None) -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_cls)(**config)
        torch.manual_seed(0)
        kw = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        return getattr(transformers, model_cls)._from_config(cfg, **kw).eval()

    build.__name__ = build.__qualname__ = model_cls
    return build
