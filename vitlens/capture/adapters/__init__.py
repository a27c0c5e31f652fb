"""Attention-family adapters, registered by decorator.

An adapter knows, for one family of timm models, which modules compute attention (in
forward order, named by their timm module path), the model's token layout, and how to
get the attention probabilities: by recomputing them from the module's own q and k
(the model stays on its fused fast path, outputs bit-identical) or by switching the
module to its unfused path and reading the probabilities it computes itself (needed
when gradients must flow through them).

Adding a family is one file in this package with one ``@register_adapter`` class.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..cache import TokenLayout, WindowLayout
from ..spec import LayerSpec, ModelDescription
from ...errors import UnsupportedModelError

#: Called by an adapter's hooks with (layer index, probabilities) once per forward, or, when
#: the adapter computes the layer in image chunks (``capture(chunk=...)``), once per chunk with
#: a third argument, the ``slice`` of the batch's images the probabilities cover.
RecordFn = Callable[..., None]


def class_path(obj: object) -> str:
    """``"module:QualName"`` of ``obj``'s exact class: how adapters claim classes (no subclasses)."""
    t = type(obj)
    return f"{t.__module__}:{t.__qualname__}"


#: Attention classes that exist in timm but are refused, with the reason (checked before matching).
REFUSED_ATTENTION: dict[str, str] = {
    "timm.layers.diff_attention:DiffAttention": (
        "differential attention (Ye et al. 2024): the weights multiplied with v are "
        "softmax_1 - lambda * softmax_2, signed and not probabilities, and each head holds two softmaxes; "
        "recording them as attention heads would give wrong head indices, rollout and distances"),
}


#: Model classes refused with a reason (no softmax token attention to record).
REFUSED_MODELS: dict[str, str] = {}


class Adapter:
    """Base class: the one place that knows a model family.

    Before any forward an adapter describes the model (:meth:`describe`): token layout per
    input size, windows, query/key token sets, named hook points with shapes, how to read
    logits (:meth:`logits`) and which modules gradient methods hook (:meth:`gradcam_modules`).
    During :func:`vitlens.capture` it installs the hooks (:meth:`install`).

    Matching fails closed: an adapter claims *exact* model classes (``model_classes``) and
    *exact* attention classes (``attention_classes``), as ``"module:QualName"`` strings; a
    subclass or look-alike is refused unless some adapter claims it.
    """

    #: Human-readable family name used in messages and ``cache.family``.
    family: str = ""
    #: Example timm model names, shown in "unsupported" messages.
    examples: tuple[str, ...] = ()
    #: Tiny configurations ``(timm name, create_model kwargs)`` the oracle tests build with
    #: random weights: every registered adapter's are checked against the model's own
    #: unfused attention (tests/integration/test_oracle.py).
    test_models: tuple[tuple[str, dict], ...] = ()
    #: Lower is tried first.
    order: int = 0
    #: :meth:`install` takes ``chunk=``: for a reduce-on-record capture it may compute the
    #: attention of layers that call ``scaled_dot_product_attention`` itself, ``chunk`` images
    #: at a time (``generic.sdpa_recorder``); other adapters record each layer whole.
    chunks: bool = False
    #: timm model modules (``timm.list_models(module=...)``) whose models may use this adapter.
    timm_modules: tuple[str, ...] = ()
    #: Exact model classes claimed, ``"module:QualName"``.
    model_classes: tuple[str, ...] = ()
    #: Exact attention-module classes claimed, ``"module:QualName"``.
    attention_classes: tuple[str, ...] = ()
    #: :meth:`forward_kept` (token dropping) is exact for this family.
    token_drop: bool = False
    #: The model's forward returns class logits. False for models that return tokens or
    #: embeddings by design (a multimodal tower's encoder): :meth:`logits` then refuses, and
    #: so does :func:`logits_of` even on the plain tensor such a model returns.
    returns_logits: bool = True
    #: What the forward returns instead, when ``returns_logits`` is False (completes "returns ...").
    returns_instead: str = "no class logits"
    #: Why not, when ``token_drop`` is False (a clause: "its attention ...").
    token_drop_reason: str = ("its attention depends on the full patch grid (windows, relative position bias "
                              "or RoPE) or it has no token sequence")

    def __init__(self, model: nn.Module):
        self.model = model

    # ------------------------------------------------------------------ matching
    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:  # pragma: no cover
        """``[(module path, module)]`` of the attention layers of ``model`` in forward order."""
        raise NotImplementedError

    @classmethod
    def claims_model(cls, model: nn.Module) -> bool:
        """``model``'s exact class is one of :attr:`model_classes`."""
        return class_path(model) in cls.model_classes

    @classmethod
    def unclaimed_attention(cls, model: nn.Module) -> list[tuple[str, str]]:
        """``[(path, class)]`` of attention modules whose exact class this adapter does not claim."""
        try:
            modules = cls.attention_modules_of(model)
        except (AttributeError, TypeError, IndexError) as e:
            return [("(structure)", f"{type(e).__name__}: {e}")]
        if not modules:
            return [("(structure)", "no attention modules found")]
        return [(p, class_path(m)) for p, m in modules if class_path(m) not in cls.attention_classes]

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.claims_model(model) and not cls.unclaimed_attention(model)

    # ------------------------------------------------------------------ description
    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        """``[(module path, module)]`` of the attention layers in forward order."""
        return self.attention_modules_of(self.model)

    @property
    def num_heads(self) -> int:
        """Heads per layer (the largest count when it varies by layer)."""
        return max(self.heads_of(i) for i in range(len(self.attention_modules())))

    def heads_of(self, layer: int) -> int:
        """Heads of one layer."""
        return int(self.attention_modules()[layer][1].num_heads)

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """Modules whose outputs are layer ``layer``'s query and key vectors ``[B, H, T, d]``,
        whose scaled dot products alone are the attention logits (no position bias or rotation
        after them); for query/key embeddings (:func:`vitlens.capture.qk.queries_and_keys`).
        Families without such vectors refuse."""
        from ...errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{self.family} models have no token-level query and key vectors whose dot products alone make "
            f"the attention logits (windows, position biases or rotary embeddings come in between), so vitlens "
            f"does not embed them; the VisionTransformer family (vit_*, deit_*, dinov2, clip) has them")

    def default_input_size(self) -> tuple[int, int]:
        """``(H, W)`` the model was configured for (``pretrained_cfg`` / ``patch_embed.img_size``)."""
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        size = cfg.get("input_size")
        img = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        if img is not None:
            return (int(img[0]), int(img[1])) if isinstance(img, (tuple, list)) else (int(img), int(img))
        if size:
            return int(size[-2]), int(size[-1])
        raise UnsupportedModelError(f"cannot tell the input size of {type(self.model).__name__}; "
                                    f"pass image_hw explicitly")

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:  # pragma: no cover - abstract
        """Token layout of the input sequence for an input of ``image_hw`` pixels."""
        raise NotImplementedError

    def window_layouts(self, image_hw: tuple[int, int]) -> list[WindowLayout]:
        """One :class:`WindowLayout` per layer for windowed models; ``[]`` for flat ones."""
        return []

    def _install_layout_hook(self, stack: ExitStack, set_layout: Callable[[TokenLayout], None],
                             current: dict[str, TokenLayout]) -> None:
        """Each forward: the layout for the input image's size (:meth:`layout_for`), from a
        pre-hook on ``model.patch_embed``, into ``current["layout"]`` and the cache."""
        def on_image(_module: nn.Module, args: tuple) -> None:
            layout = self.layout_for(tuple(args[0].shape[-2:]))
            current["layout"] = layout
            set_layout(layout)

        stack.callback(self.model.patch_embed.register_forward_pre_hook(on_image).remove)

    def layer_kind(self, layer: int) -> str:
        """``"self"``, ``"window"``, ``"grid"``, ``"class"`` or ``"pool"`` (see :class:`LayerSpec`)."""
        return "self"

    def layer_softmax(self, layer: int) -> bool:
        """The recorded weights of ``layer`` are softmax probabilities (rows sum to 1).

        False for weights the model derives from probabilities before multiplying them with
        v (talking-heads attention mixes the heads after the softmax): the recorder then
        skips the row-sum check and token analyses refuse the layer.
        """
        return True

    def layer_geometry(self, layer: int, layout: TokenLayout, windows: list[WindowLayout]) -> dict:
        """Token sets of one layer, as :class:`LayerSpec` fields.

        Default: flat self-attention over ``layout`` (or, for windowed models, inside the
        layer's windows on its stage grid). Override for class-attention, pooling heads,
        spatial reduction, hierarchical stages.
        """
        if windows:
            w = windows[layer]
            return dict(num_queries=w.window_area, num_keys=w.window_area, query_grid=w.grid_size,
                        key_grid=w.grid_size, stride=w.patch_size)
        return dict(num_queries=layout.num_tokens, num_keys=layout.num_tokens, query_grid=layout.grid_size,
                    key_grid=layout.grid_size, query_prefix=layout.num_prefix_tokens,
                    key_prefix=layout.num_prefix_tokens, stride=layout.patch_size)

    @property
    def num_prefix_tokens(self) -> int:
        """Prefix tokens (CLS, distillation, registers) of the sequence; 0 for windowed models."""
        return self.layout_for(self.default_input_size()).num_prefix_tokens

    def describe(self, image_hw: tuple[int, int] | None = None) -> ModelDescription:
        """What vitlens knows about the model for an input of ``image_hw`` pixels (default: its own size)."""
        hw = tuple(int(v) for v in (image_hw or self.default_input_size()))
        layout = self.layout_for(hw)  # type: ignore[arg-type]
        windows = self.window_layouts(hw)  # type: ignore[arg-type]
        specs = []
        for i, (path, _m) in enumerate(self.attention_modules()):
            kind = self.layer_kind(i)
            geo = self.layer_geometry(i, layout, windows)
            nq, nk = geo["num_queries"], geo["num_keys"]
            shape = ("[B, nW, H, n, n]" if kind in ("window", "grid") else "[B, H, Tq, Tk]" if nq != nk else "[B, H, T, T]")
            geo.setdefault("stage", windows[i].stage if windows else 0)
            geo.setdefault("softmax", self.layer_softmax(i))
            specs.append(LayerSpec(index=i, hook_point=path, kind=kind, heads=self.heads_of(i),
                                   shape=shape, **geo))
        points, kind = self.gradcam_points()
        return ModelDescription(family=self.family, input_size=hw, layout=layout,  # type: ignore[arg-type]
                                windows=tuple(windows), layers=tuple(specs), gradcam_points=points,
                                gradcam_kind=kind, class_logits=self.returns_logits)

    # ------------------------------------------------------------------ outputs and gradients
    def logits(self, output: object) -> torch.Tensor:
        """The ``[B, classes]`` logits from whatever the model's forward returned."""
        if isinstance(output, torch.Tensor):
            return output
        for attr in ("logits", "pooler_output"):
            if isinstance(getattr(output, attr, None), torch.Tensor):
                return getattr(output, attr)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return output[0]
        raise TypeError(f"cannot read logits from a {type(output).__name__} returned by {type(self.model).__name__}")

    def no_logits_reason(self) -> str:
        """Why the model's output holds no class logits (for adapters with ``returns_logits`` False)."""
        return f"{type(self.model).__name__} ({self.family}) returns {self.returns_instead}"

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """Module paths whose outputs Grad-CAM reads (one per accepted ``layer``) and their kind.

        Flat ViTs: ``blocks.{i}.norm1`` (``"tokens"``, ``[B, T, D]``): the tokens entering
        block i's attention, the last place patch tokens still reach a CLS-pooled head.
        """
        return tuple(f"blocks.{i}.norm1" for i in range(len(self.model.blocks))), "tokens"

    def gradcam_modules(self) -> tuple[list[nn.Module], str]:
        """The modules of :meth:`gradcam_points`, and their kind."""
        points, kind = self.gradcam_points()
        return [self.model.get_submodule(p) for p in points], kind

    def block_points(self) -> list[tuple[str, nn.Module]]:
        """``[(path, module)]`` whose outputs are the residual stream ``[B, T, D]`` after each block.

        Flat models only (used by :func:`vitlens.high_norm_tokens`); others raise.
        """
        raise UnsupportedModelError(f"{type(self.model).__name__} ({self.family}) has no flat sequence of "
                                    f"blocks over one token layout; this needs a flat ViT-like model")

    def forward_kept(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits of the model run on its prefix tokens and the patch tokens ``keep`` only.

        Only families whose attention does not depend on the full patch grid support it.
        """
        raise UnsupportedModelError(
            f"token dropping runs a ViT on a subset of its patch tokens; {type(self.model).__name__} "
            f"({self.family}): {self.token_drop_reason}. Use the pixel metrics (deletion, insertion, positive, "
            f"negative) for this model")

    def grad_context(self, stack: ExitStack) -> None:
        """Make the model's forward differentiable through the recorded probabilities.

        Gradient checkpointing is switched off for the block (and restored): a checkpointed
        block recomputes its forward during backward, after the capture block has restored
        the fused-attention flags and removed the hooks, so the recomputation would not
        match. Checkpointing only trades memory for time; the maths is the same.
        """
        for m in self.model.modules():
            if getattr(m, "grad_checkpointing", False) is True:
                stack.callback(setattr, m, "grad_checkpointing", True)
                m.grad_checkpointing = False

    def relevance_context(self, stack: ExitStack) -> None:
        """Prepare the model for an LRP pass (:func:`vitlens.analysis.lrp.lrp_relevance`), undo on ``stack``.

        For a family that runs a module whose output the logits never use (and which no
        relevance rule covers), switch that module off for the pass; the logits must stay
        the same. Nothing by default.
        """

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout | WindowLayout], None]) -> None:
        """Install hooks and change module flags, registering every undo on ``stack`` as it goes.

        ``set_layout`` takes the model-wide :class:`TokenLayout` and, for windowed
        models, one :class:`WindowLayout` per layer (it carries its layer index). An
        install that fails half-way leaks nothing: the stack undoes what was done.
        Adapters with :attr:`chunks` also take ``chunk`` (None, ``"auto"`` or images).
        """
        raise NotImplementedError  # pragma: no cover


_REGISTRY: list[type[Adapter]] = []


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to the registry (like timm's ``@register_model``)."""
    if not cls.family:
        raise TypeError(f"adapter {cls.__name__} must set `family`")
    _REGISTRY.append(cls)
    return cls


def registered_adapters() -> list[type[Adapter]]:
    """Registered adapter classes, in registration order."""
    _load_builtin()
    return list(_REGISTRY)


def supported_families() -> list[str]:
    """Names of the attention families vitlens can record."""
    return [a.family for a in registered_adapters()]


def cache_dir() -> Path:
    """Where vitlens keeps small caches: ``$VITLENS_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/vitlens``, else ``~/.cache/vitlens``."""
    if os.environ.get("VITLENS_CACHE_DIR"):
        return Path(os.environ["VITLENS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vitlens"


def _verdicts_key() -> str:
    """What the per-model verdicts depend on: timm, vitlens and every registered adapter's code."""
    import hashlib
    import inspect

    import timm

    from ... import __version__

    h = hashlib.sha256(f"timm {timm.__version__}; vitlens {__version__}".encode())
    for cls in registered_adapters():
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        try:
            h.update(Path(inspect.getsourcefile(cls) or "").read_bytes())
        except (OSError, TypeError):
            pass
    return h.hexdigest()


def _read_verdicts(path: Path, key: str) -> dict[str, str | None]:
    try:
        data = json.loads(path.read_text())
        return dict(data["verdicts"]) if data.get("key") == key else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # missing, unreadable or from another version: rebuild


def _write_verdicts(path: Path, key: str, verdicts: dict[str, str | None]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "verdicts": verdicts}, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the answer is right, only the next call is slower


def model_verdicts(pattern: str = "*", *, refresh: bool = False, module: str | None = None,
                   progress: Callable[[int], None] | None = None) -> list[tuple[str, str, str | None, str]]:
    """Every timm architecture matching ``pattern`` with its verdict.

    Each architecture is built on the meta device (no memory, no weights) and handed to
    :func:`adapter_for`, so the verdict is what capture really does, not a guess from
    names. Verdicts are kept in ``cache_dir()/model-verdicts.json``, valid for the
    installed timm and vitlens and the registered adapters' source: later calls build only
    architectures not seen before (a cold listing of all ~1,400 takes a few minutes).

    Args:
        pattern: shell-style filter on the architecture name, as ``timm.list_models``.
        refresh: ignore the cached verdicts and build every candidate again.
        module: only architectures of this timm module (e.g. ``"vision_transformer"``).
        progress: called with the number of architectures that must be built, before building.

    Returns:
        ``[(name, timm module, family or None, reason)]`` sorted by name; ``reason`` is ""
        for supported architectures and says why for refused ones.
    """
    import timm

    names = sorted(timm.list_models(pattern, module=module) if module else timm.list_models(pattern))
    path, key = cache_dir() / "model-verdicts.json", _verdicts_key()
    cached = _read_verdicts(path, key)
    verdicts = {} if refresh else dict(cached)
    todo = [n for n in names if n not in verdicts]
    if progress is not None:
        progress(len(todo))
    for name in todo:
        verdicts[name] = _verdict(name)
    if todo:
        _write_verdicts(path, key, {**cached, **verdicts})  # a refresh of some names keeps the rest
    out = []
    for n in names:
        mod, fam, why = verdicts[n]
        out.append((n, mod, fam, why))
    return out


def _verdict(name: str) -> tuple[str, str | None, str]:
    """``(timm module, family or None, reason)`` for one timm architecture, built on the meta device."""
    import timm

    try:
        mod = _timm_module(name)
    except Exception:  # noqa: BLE001 - an unknown module does not stop the verdict
        mod = ""
    try:
        with torch.device("meta"), _SkipMetaInit():
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - not buildable here: report why
        return mod, None, f"cannot be built without weights: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    try:
        return mod, adapter_for(model).family, ""
    except UnsupportedModelError as e:
        why = str(e)
        if why.startswith("unsupported architecture"):
            why = why.split(":")[0] + ": no registered adapter claims this model class"
        return mod, None, why if len(why) <= 300 else why[:297] + "..."


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Skips in-place ops (weight init: ``trunc_normal_``, ``clamp_``, ...) on meta tensors.

    A meta tensor has no values, so an in-place op changes nothing a verdict depends on
    (structure, classes, shapes); torch still routes each through its reference
    decompositions, which made building the ~1,400 architectures 3-7x slower.
    """

    _KEEP = frozenset({"resize_", "resize_as_", "set_", "requires_grad_", "share_memory_", "as_strided_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (name.endswith("_") and not name.endswith("__") and name not in self._KEEP and args
                and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta"):
            return args[0]
        return func(*args, **(kwargs or {}))


def _timm_module(name: str) -> str:
    import timm

    arch = timm.models.get_arch_name(name)
    fn = timm.models.model_entrypoint(arch)
    return fn.__module__.rsplit(".", 1)[-1]


def supported_models(pattern: str = "*", family: str | None = None, *, refresh: bool = False,
                     progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
    """``[(timm model name, family)]`` of the timm architectures vitlens can record.

    A filtered view of :func:`model_verdicts` (see there for how verdicts are made and cached).

    Args:
        pattern: shell-style filter on the architecture name, as ``timm.list_models``.
        family: only architectures of this family.
        refresh: ignore the cached verdicts and build every candidate again.
        progress: called with the number of candidates that must be built, before building.
    """
    return [(n, fam) for n, _mod, fam, _why in model_verdicts(pattern, refresh=refresh, progress=progress)
            if fam is not None and (family is None or fam == family)]


def _is_compiled(model: nn.Module) -> bool:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return isinstance(model, OptimizedModule)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``, or :class:`UnsupportedModelError` saying why it is refused.

    Fails closed: the model's exact class and every attention module's exact class must be
    claimed by one registered adapter. Known non-recordable attention (differential
    attention, channel attention, ...) is refused with its reason; ``torch.compile``
    wrappers are refused with what to do instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if _is_compiled(model):
        raise UnsupportedModelError(
            "cannot record a torch.compile'd model: compiled graphs do not run vitlens' hooks as "
            "written; pass the eager module instead, vitlens.capture(model._orig_mod) (it shares the "
            "compiled model's weights), or capture before compiling")
    adapters = registered_adapters()
    for path, m in model.named_modules():
        why = REFUSED_ATTENTION.get(class_path(m))
        if why is not None:
            raise UnsupportedModelError(
                f"{type(model).__name__} is refused: {path or 'the model'} is {type(m).__name__}, {why}")
    claimed = [cls for cls in adapters if cls.claims_model(model)]
    for cls in claimed:
        if not cls.unclaimed_attention(model):
            return cls(model)
    if claimed:
        cls = claimed[0]
        path, what = cls.unclaimed_attention(model)[0]
        raise UnsupportedModelError(
            f"{type(model).__name__} is a {cls.family} model, but its attention module {path} is {what}, "
            f"which no vitlens adapter claims; a subclass or look-alike of the family's attention may "
            f"compute something else, so vitlens refuses it rather than record it approximately. "
            f"Register an adapter for that class (vitlens.register_adapter) to record it")
    bases = [f"{b.__module__}:{b.__qualname__}" for b in type(model).__mro__[1:]]
    for cls in adapters:
        base = next((b for b in bases if b in cls.model_classes), None)
        if base is not None:
            raise UnsupportedModelError(
                f"{type(model).__name__} subclasses {base.split(':')[1]} ({cls.family}), but vitlens claims "
                f"exact classes only: a subclass may change the forward, so it is refused rather than "
                f"recorded approximately. Register an adapter for {class_path(model)} to record it")
    why = REFUSED_MODELS.get(class_path(model))
    if why is not None:
        raise UnsupportedModelError(f"{type(model).__name__} is refused: {why}")
    examples = "; ".join(f"{a.family} (e.g. {', '.join(a.examples[:2])})" for a in adapters)
    raise UnsupportedModelError(
        f"unsupported architecture {type(model).__name__}: vitlens records softmax token attention of "
        f"these families: {examples}. Use a model of one of those families")


def logits_of(model: nn.Module, output: object) -> torch.Tensor:
    """The ``[B, classes]`` logits in what ``model(x)`` returned.

    A tensor is returned as is (timm models, any plain classifier) unless the adapter
    claiming ``model``'s class says its forward returns no class logits (a multimodal
    tower's encoder returns tokens, also a tensor); anything else (a transformers
    ``ImageClassifierOutput``) is read by the model's adapter (:meth:`Adapter.logits`),
    which refuses outputs without logits with the reason.
    """
    if isinstance(output, torch.Tensor) and _no_logits_adapter(model) is None:
        return output
    return adapter_for(model).logits(output)


def require_logits(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` with the reason if ``model``'s forward returns no class
    logits (a tower's encoder returning tokens); for entry points that need a prediction, before
    any forward."""
    cls = _no_logits_adapter(model)
    if cls is not None:
        raise UnsupportedModelError(cls(model).no_logits_reason())


def _no_logits_adapter(model: nn.Module) -> type[Adapter] | None:
    """The adapter claiming ``model``'s exact class if it declares the model's output has no class logits."""
    path = class_path(model)
    return next((cls for cls in registered_adapters() if not cls.returns_logits and path in cls.model_classes), None)


def classifier(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward as a function of the images returning logits (for captum's attribution classes)."""
    def forward(images: torch.Tensor) -> torch.Tensor:
        return logits_of(model, model(images))

    return forward


def refuse(class_path_: str, reason: str, *, attention: bool = False) -> None:
    """Refuse a model class (or, with ``attention=True``, any model containing an attention class)."""
    (REFUSED_ATTENTION if attention else REFUSED_MODELS)[class_path_] = reason


_LOADED = False


def _load_builtin() -> None:
    """Import every module of this package once: each registers its adapter(s)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    # vit first: more specific adapters registered later must not shadow it, and the
    # generic fallback (``generic.py``) is registered last by its own ``order``.
    names = sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda n: (n != "vit", n))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    _REGISTRY.sort(key=lambda a: a.order)
