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
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..cache import TokenLayout, WindowLayout
from ...errors import UnsupportedModelError

#: Called by an adapter's hooks with (layer index, probabilities) once per forward.
RecordFn = Callable[[int, torch.Tensor], None]


class Adapter:
    """Base class. Subclasses set ``family`` and implement the methods below."""

    #: Human-readable family name used in messages and ``cache.family``.
    family: str = ""
    #: Example timm model names, shown in "unsupported" messages and used by tests.
    examples: tuple[str, ...] = ()
    #: Lower is tried first; generic fallbacks use a high value.
    order: int = 0
    #: timm model modules (``timm.list_models(module=...)``) whose models may use this
    #: adapter; ``vitlens models`` checks each candidate by building it on the meta device.
    timm_modules: tuple[str, ...] = ()
    #: ``"module:Class"`` of the timm model class this adapter is for ("" = any class).
    model_class: str = ""

    @classmethod
    def is_model_class(cls, model: nn.Module) -> bool:
        """``model`` is an instance of ``model_class`` (always True when it is unset)."""
        if not cls.model_class:
            return True
        import importlib

        module, name = cls.model_class.split(":")
        return isinstance(model, getattr(importlib.import_module(module), name))

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def attention_modules(self) -> list[tuple[str, nn.Module]]:  # pragma: no cover
        """``[(module path, module)]`` of the attention layers in forward order."""
        raise NotImplementedError

    @property
    def num_heads(self) -> int:  # pragma: no cover
        """Heads per layer (the largest count when it varies by layer)."""
        raise NotImplementedError

    def heads_of(self, layer: int) -> int:
        """Heads of one layer; override when the count varies by layer (Swin stages)."""
        return self.num_heads

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

    def install(self, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout | WindowLayout], None]
                ) -> tuple[list[torch.utils.hooks.RemovableHandle], list[Callable[[], None]]]:
        """Install hooks; return (handles to remove, callables restoring module state).

        ``set_layout`` takes the model-wide :class:`TokenLayout` and, for windowed
        models, one :class:`WindowLayout` per layer (it carries its layer index).
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


def supported_models(pattern: str = "*", family: str | None = None, *, refresh: bool = False,
                     progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
    """``[(timm model name, family)]`` of the timm architectures vitlens can record.

    Each candidate from the adapters' ``timm_modules`` is built on the meta device (no
    memory, no weights) and must be accepted by :func:`adapter_for`, so the list is what
    capture really supports, not a guess from names. Building all ~300 candidates takes
    about two minutes, so each verdict is kept in ``cache_dir()/supported-models.json``,
    valid for the installed timm and vitlens and the registered adapters' source: later
    calls build only candidates not seen before.

    Args:
        pattern: shell-style filter on the architecture name, as ``timm.list_models``.
        family: only candidates of this family's adapter (faster: fewer models built).
        refresh: ignore the cached verdicts and build every candidate again.
        progress: called with the number of candidates that must be built, before building.
    """
    import timm

    names: list[str] = []
    for cls in registered_adapters():
        if family is not None and cls.family != family:
            continue
        for module in cls.timm_modules:
            names += [n for n in timm.list_models(pattern, module=module) if n not in names]
    path, key = cache_dir() / "supported-models.json", _verdicts_key()
    cached = _read_verdicts(path, key)
    verdicts = {} if refresh else dict(cached)
    todo = [n for n in sorted(names) if n not in verdicts]
    if progress is not None:
        progress(len(todo))
    for name in todo:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            verdicts[name] = adapter_for(model).family
        except (UnsupportedModelError, TypeError, ValueError, RuntimeError, AssertionError,
                NotImplementedError, AttributeError):
            verdicts[name] = None  # not recordable (or not buildable without weights): not listed
    if todo:
        _write_verdicts(path, key, {**cached, **verdicts})  # a refresh of some names keeps the rest
    return [(n, verdicts[n]) for n in sorted(names)  # type: ignore[misc]
            if verdicts[n] is not None and (family is None or verdicts[n] == family)]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``, or UnsupportedModelError naming the supported families."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for cls in registered_adapters():
        if cls.matches(model):
            return cls(model)
    examples = "; ".join(f"{a.family} (e.g. {', '.join(a.examples)})" for a in registered_adapters())
    raise UnsupportedModelError(
        f"unsupported architecture {type(model).__name__}: vitlens records token self-attention "
        f"of these families: {examples}. Use a model of one of those families")


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
