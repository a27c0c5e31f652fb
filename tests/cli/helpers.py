"""Shared helpers for the CLI tests: run in-process and check the one-line error contract."""
from __future__ import annotations

from click.testing import CliRunner

from vitlens.cli.main import cli


def run(*args, **kwargs):
    """Invoke the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_line_error(result, *reasons: str) -> str:
    """Exit != 0, exactly one non-empty stderr line 'vitlens: error: ...' with every reason, no traceback."""
    assert result.exit_code != 0, result.stdout
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("vitlens: error: "), line
    for reason in reasons:
        assert reason in line, line
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    # an in-process run that failed "cleanly" ends in SystemExit, not a propagated error
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return line
