"""``vitlens models``: every timm architecture with vitlens' verdict (family, or why it is refused)."""
from __future__ import annotations

import click

from .common import handle_errors


@click.command()
@click.argument("pattern", default="*")
@click.option("--supported", is_flag=True, help="Only architectures vitlens can record.")
@click.option("--family", default=None, help="Only this family (e.g. VisionTransformer, Swin, EVA).")
@click.option("--module", "timm_module", default=None, help="Only this timm module (e.g. vision_transformer).")
@click.option("--refresh", is_flag=True, help="Check every architecture again instead of using the cached answers.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@handle_errors
def models(pattern, supported, family, timm_module, refresh, debug):
    """List timm architectures matching PATTERN (shell-style, e.g. 'vit_*dinov2*') with their verdict.

    Each line is the architecture and the family vitlens records it as, or `refused:` and
    the reason. Each architecture is built on the meta device (no weights, no memory) and
    checked by the same adapter lookup `vitlens.capture` uses; the answers are cached per
    timm and vitlens version (all ~1,400 take a few minutes the first time). The last
    line counts supported and refused. Pretrained tags: `timm.list_pretrained()`.
    """
    from vitlens.capture import supported_families
    from vitlens.capture.adapters import cache_dir, model_verdicts

    def announce(n: int) -> None:
        if n:
            click.echo(f"vitlens: checking {n} timm architectures on the meta device (answers cached in "
                       f"{cache_dir()} for next time)...", err=True)

    if family is not None and family not in supported_families():
        raise click.BadParameter(f"{family!r}; families: {', '.join(supported_families())}",
                                 param_hint="--family")
    rows = model_verdicts(pattern, refresh=refresh, module=timm_module, progress=announce)
    n_all, n_ok = len(rows), sum(fam is not None for _n, _m, fam, _w in rows)
    if family is not None:
        rows = [r for r in rows if r[2] == family]
    if supported:
        rows = [r for r in rows if r[2] is not None]
    if not rows:
        what = "supported model" if supported or family else "timm architecture"
        click.echo(f"vitlens: no {what} matches {pattern!r}", err=True)
        raise SystemExit(1)
    width = max(len(r[0]) for r in rows)
    for name, _mod, fam, why in rows:
        click.echo(f"{name:<{width}}  {fam if fam is not None else 'refused: ' + why}")
    click.echo(f"{n_all} architectures match {pattern!r}: {n_ok} supported, {n_all - n_ok} refused"
               + (f"; {len(rows)} listed" if len(rows) != n_all else ""))
