"""The ``vitlens`` command."""
from __future__ import annotations

import click

from vitlens import __version__

from .attend import attend
from .shape_bias import shape_bias


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vitlens")
def cli() -> None:
    """See and measure what Vision Transformers attend to."""


cli.add_command(attend)
cli.add_command(shape_bias)


def main() -> None:
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
