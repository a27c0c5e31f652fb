"""The ``vitlens`` command."""
from __future__ import annotations

import click

from vitlens import __version__

from .attend import attend
from .distance import distance
from .evaluate import evaluate
from .explore import explore
from .export import export
from .figure import figure
from .importance import importance
from .inspect import inspect
from .models import models
from .shape_bias import shape_bias


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vitlens")
def cli() -> None:
    """See and measure what Vision Transformers attend to."""


cli.add_command(attend)
cli.add_command(distance)
cli.add_command(evaluate)
cli.add_command(explore)
cli.add_command(export)
cli.add_command(figure)
cli.add_command(importance)
cli.add_command(inspect)
cli.add_command(models)
cli.add_command(shape_bias)


def main() -> None:
    """Entry point: click's own handling, except that Ctrl-C anywhere (also while torch
    imports or a DataLoader starts) ends with one line and exit status 130, the shell's
    convention, instead of click's "Aborted!" and status 1."""
    import sys

    try:
        code = cli.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("\nvitlens: interrupted", err=True)
        raise SystemExit(130) from None
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None
    except BrokenPipeError:  # e.g. `vitlens models | head`: the reader is gone, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
