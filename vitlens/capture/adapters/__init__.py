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


def supported_models(pattern: str = "*", family: str | None = None) -> list[tuple[str, str]]:
    """``[(timm model name, family)]`` of the timm architectures vitlens can record.

    Each candidate from the adapters' ``timm_modules`` is built on the meta device (no
    memory, no weights) and must be accepted by :func:`adapter_for`, so the list is what
    capture really supports, not a guess from names.

    Args:
        pattern: shell-style filter on the architecture name, as ``timm.list_models``.
        family: only candidates of this family's adapter (faster: fewer models built).
    """
    import timm

    names: list[str] = []
    for cls in registered_adapters():
        if family is not None and cls.family != family:
            continue
        for module in cls.timm_modules:
            names += [n for n in timm.list_models(pattern, module=module) if n not in names]
    out = []
    for name in sorted(names):
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            found = adapter_for(model).family
            if family is None or found == family:
                out.append((name, found))
        except (UnsupportedModelError, TypeError, ValueError, RuntimeError, AssertionError,
                NotImplementedError, AttributeError):
            continue  # not recordable (or not buildable without weights): not listed
    return out


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
