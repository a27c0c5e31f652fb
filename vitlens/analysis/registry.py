"""The registry of explanation methods: one object per method, everything else derived from it.

Each method is a :class:`Method`: its name, a typed options dataclass (the options and
their defaults), the function that computes the maps (whose docstring carries the
formula and the paper), its cost, whether it depends on the target class, and the model
families it supports. :func:`vitlens.explain` looks methods up here, ``vitlens.methods()``
lists them, the CLI's ``--method`` choices and the method table in ``docs/methods.md``
(:func:`method_table`) are generated from it.

Adding a method is one decorated function::

    @dataclass(frozen=True)
    class MyOptions:
        alpha: float = 1.0

    @register_method("mine", MyOptions, cost="1 forward + 1 backward", class_specific=True,
                     summary="my relevance", paper="Me et al. 2025")
    def _mine(model, images, target, opts: MyOptions) -> MethodOutput:
        '''Formula and reference here.'''
        ...
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from ..capture import TokenLayout

#: ``families`` value of a method that works for every family vitlens records.
ALL_FAMILIES = ("all",)


class MethodOutput(NamedTuple):
    """What a method's function returns."""

    maps: torch.Tensor            #: ``[B, gh, gw]`` (or the method's documented shape)
    logits: torch.Tensor          #: ``[B, C]``
    layout: TokenLayout
    resolved: dict[str, Any]      #: options whose value the run resolved (e.g. a negative layer index)


@dataclass(frozen=True)
class Method:
    """One registered explanation method.

    Attributes:
        name: the name :func:`vitlens.explain` takes (``method=...``).
        options: the frozen dataclass of its options; the field defaults are the defaults.
        run: ``(model, images, target, options) -> MethodOutput``; its docstring holds the
            formula and the paper.
        summary: one line for tables and ``--help``.
        paper: the reference (authors, venue, year, link), "" for baselines.
        cost: what one call costs, in forward/backward passes.
        class_specific: whether the map depends on the target class.
        families: model families it supports (:data:`ALL_FAMILIES` = every family vitlens records).
    """

    name: str
    options: type
    run: Callable[..., MethodOutput]
    summary: str
    paper: str
    cost: str
    class_specific: bool
    families: tuple[str, ...] = ALL_FAMILIES

    @property
    def doc(self) -> str:
        """The method's full documentation: formula and paper (the docstring of ``run``)."""
        return inspect.getdoc(self.run) or self.summary

    @property
    def defaults(self) -> dict[str, Any]:
        """Option name -> default value."""
        return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(self.options)}

    def make_options(self, given: dict[str, Any]) -> Any:
        """The options dataclass from keyword arguments; TypeError naming unknown ones."""
        allowed = self.defaults
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            names = ", ".join(allowed) if allowed else "none"
            raise TypeError(f"method {self.name!r} got unknown option(s) {', '.join(unknown)}; "
                            f"its options are: {names}")
        return self.options(**given)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"Method({self.name!r}: {self.summary}; options({opts}); cost: {self.cost})"


_REGISTRY: dict[str, Method] = {}


def register_method(name: str, options: type, *, summary: str, cost: str, class_specific: bool,
                    paper: str = "", families: tuple[str, ...] = ALL_FAMILIES
                    ) -> Callable[[Callable[..., MethodOutput]], Callable[..., MethodOutput]]:
    """Decorator registering ``run`` as the explanation method ``name`` (see the module docstring)."""
    if not dataclasses.is_dataclass(options) or not isinstance(options, type):
        raise TypeError(f"options of method {name!r} must be a dataclass type, got {options!r}")

    def deco(run: Callable[..., MethodOutput]) -> Callable[..., MethodOutput]:
        if name in _REGISTRY:
            raise ValueError(f"explanation method {name!r} is already registered")
        _REGISTRY[name] = Method(name, options, run, summary, paper, cost, class_specific, tuple(families))
        return run
    return deco


def _load_builtin() -> None:
    from . import explain  # noqa: F401  (registers the built-in methods)


def methods() -> list[Method]:
    """Every registered explanation method, in the order the docs present them."""
    _load_builtin()
    return list(_REGISTRY.values())


def method_names() -> tuple[str, ...]:
    """The names :func:`vitlens.explain` accepts."""
    return tuple(m.name for m in methods())


def get_method(name: str) -> Method:
    """The registered method ``name``, or ValueError listing the methods (with a close match)."""
    _load_builtin()
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    known = list(_REGISTRY)
    hint = ""
    if isinstance(name, str):
        close = difflib.get_close_matches(name.lower().replace("_", "-"), known, n=2, cutoff=0.5)
        hint = f". Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown explanation method {name!r}; known methods: {', '.join(known)}{hint}")


def method_table() -> str:
    """The Markdown method table of ``docs/methods.md``, generated from the registry."""
    rows = ["| method | what | class-specific | options (defaults) | cost | families | paper |",
            "|---|---|---|---|---|---|---|"]
    for m in methods():
        opts = ", ".join(f"`{k}={v!r}`" for k, v in m.defaults.items()) or "none"
        fam = "all" if m.families == ALL_FAMILIES else ", ".join(m.families)
        rows.append(f"| `{m.name}` | {m.summary} | {'yes' if m.class_specific else 'no'} | {opts} | {m.cost} "
                    f"| {fam} | {m.paper or '-'} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m vitlens.analysis.registry: print the docs table
    print(method_table())
