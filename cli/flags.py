"""Translate the library's parameter names into this command's flags.

The library names Python parameters in its messages, in backticks: ``pass `resume=True```,
```batch_size` must be at least 1``, ``a local weights file as `checkpoint=PATH```. A
command-line user cannot pass those, so before an error is shown the CLI rewrites each
backticked parameter into the flag of the running command that sets it (read from click's
own option declarations): ```resume=True``` -> ``--resume``, ```pretrained=False``` ->
``--no-pretrained``, ```checkpoint=PATH``` -> ``--checkpoint PATH``, ```batch_size``` ->
``--batch-size``. A parameter the command has no flag for keeps its Python spelling,
without the backticks.
"""
from __future__ import annotations

import re

import click

#: Library parameter -> the click parameter names that may stand for it (in order).
ALIASES: dict[str, tuple[str, ...]] = {
    "name": ("model_name", "model_names"),        # load_model(name=...) is --model
    "model": ("model_name", "model_names"),
    "checkpoint": ("checkpoint", "checkpoints"),
    "target_source": ("target",),                  # evaluate(target_source=...) is `vitlens evaluate --target`
}

_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


def _options(ctx: click.Context | None) -> dict[str, click.Option]:
    opts: dict[str, click.Option] = {}
    while ctx is not None:
        for p in ctx.command.params:
            if isinstance(p, click.Option) and p.name and p.name not in opts:
                opts[p.name] = p
        ctx = ctx.parent
    return opts


def _long(names: list[str]) -> str | None:
    longs = [n for n in names if n.startswith("--")]
    return max(longs, key=len) if longs else None


def to_flags(message: str, ctx: click.Context | None = None) -> str:
    """``message`` with every backticked library parameter written as the command's flag.

    Args:
        message: a library error message.
        ctx: the click context whose command's options are used (default: the current one).
    """
    options = _options(ctx if ctx is not None else click.get_current_context(silent=True))

    def flag_for(name: str, value: str | None) -> str | None:
        for key in (name, *ALIASES.get(name, ())):
            opt = options.get(key)
            if opt is None:
                continue
            if value == "False" and opt.is_flag:
                off = _long(list(opt.secondary_opts))
                if off:
                    return off
                continue
            flag = _long(list(opt.opts))
            if flag is None:
                continue
            if opt.is_flag or value is None or value == "True":
                return flag
            return f"{flag} {value}"
        return None

    def replace(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        flag = flag_for(name, value)
        if flag is not None:
            return flag
        return name if value is None else f"{name}={value}"

    return _PARAM.sub(replace, message)
