"""``vitlens models``: the timm model names whose attention vitlens can record."""
from __future__ import annotations

import click

from .common import handle_errors


@click.command()
@click.argument("pattern", default="*")
@click.option("--family", default=None, help="Only this family (e.g. VisionTransformer, Swin, EVA).")
@click.option("--refresh", is_flag=True, help="Check every candidate again instead of using the cached answers.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@handle_errors
def models(pattern, family, refresh, debug):
    """List supported timm architectures matching PATTERN (shell-style, e.g. 'vit_*dinov2*').

    Each candidate is built on the meta device (no weights, no memory) and checked by the
    same adapter lookup `vitlens.capture` uses; the answers are cached per timm and
    vitlens version (all ~300 candidates take about two minutes the first time).
    Pretrained tags: `timm.list_pretrained()`.
    """
    from vitlens.capture import supported_families, supported_models
    from vitlens.capture.adapters import cache_dir

    def announce(n: int) -> None:
        if n:
            click.echo(f"vitlens: checking {n} timm architectures on the meta device (answers cached in "
                       f"{cache_dir()} for next time)...", err=True)

    if family is not None and family not in supported_families():
        raise click.BadParameter(f"{family!r}; families: {', '.join(supported_families())}",
                                 param_hint="--family")
    rows = supported_models(pattern, family=family, refresh=refresh, progress=announce)
    if not rows:
        click.echo(f"vitlens: no supported model matches {pattern!r}", err=True)
        raise SystemExit(1)
    width = max(len(n) for n, _ in rows)
    for name, fam in rows:
        click.echo(f"{name:<{width}}  {fam}")
