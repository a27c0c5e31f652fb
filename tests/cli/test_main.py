"""The ``vitlens`` entry point (``vitlens.cli.main:main``): exit statuses of the real process.

The in-process tests elsewhere invoke the click group; these run ``main()`` itself, as
the installed ``vitlens`` script does, with ``sys.argv`` set.
"""
from __future__ import annotations

import sys

import pytest

import vitlens
from vitlens.cli.main import main


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["vitlens", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_ctrl_c_anywhere_exits_130_with_one_line(monkeypatch, capsys):
    """Ctrl-C outside the export loop (imports, model building, DataLoader start-up):
    click alone would print "Aborted!" and exit 1."""
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["vitlens.capture.adapters"], "model_verdicts", interrupted)
    code, out, err = run_main(monkeypatch, capsys, "models", "deit_tiny*")
    assert code == 130
    assert [line for line in err.splitlines() if line.strip()] == ["vitlens: interrupted"]
    assert "Aborted" not in err and "Traceback" not in err


def test_statuses_of_success_usage_errors_and_commands(monkeypatch, capsys, tmp_path):
    code, out, _ = run_main(monkeypatch, capsys, "--version")
    assert code == 0 and vitlens.__version__ in out
    code, out, _ = run_main(monkeypatch, capsys, "--help")
    assert code == 0 and "attend" in out
    code, _, err = run_main(monkeypatch, capsys, "attend")              # missing argument: click's usage error
    assert code == 2 and "Missing argument" in err
    code, _, err = run_main(monkeypatch, capsys, "no-such-command")
    assert code == 2 and "No such command" in err
    code, _, err = run_main(monkeypatch, capsys, "models", "resnet1*", "--supported")   # the command's own status
    assert code == 1 and "no supported model" in err
    code, out, _ = run_main(monkeypatch, capsys, "models", "deit_tiny_patch16*")
    assert code == 0 and "deit_tiny_patch16_224" in out
    code, _, err = run_main(monkeypatch, capsys, "inspect", str(tmp_path / "missing.h5"))  # a user error
    assert code == 1 and err.startswith("vitlens: error: no such file")


def test_python_m_vitlens_cli_is_the_vitlens_command(tmp_path):
    """``python -m vitlens.cli`` is ``vitlens`` (the torchrun entry point: ``torchrun -m vitlens.cli export ...``)."""
    import subprocess

    # cwd: outside the checkout, whose ./vitlens has no cli/
    r = subprocess.run([sys.executable, "-m", "vitlens.cli", "export", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage: python -m vitlens.cli export [OPTIONS] INPUT OUTPUT.h5" in r.stdout


@pytest.mark.filterwarnings("ignore:'vitlens.batch' found in sys.modules:RuntimeWarning")  # vitlens imports it
def test_python_m_vitlens_batch_says_where_the_command_went(monkeypatch):
    """The library has no command line: ``python -m vitlens.batch`` names the CLI's equivalent
    and exits non-zero, without importing the CLI."""
    import runpy

    monkeypatch.setitem(sys.modules, "vitlens.cli.main", None)  # importing the CLI would fail
    monkeypatch.setattr(sys, "argv", ["vitlens.batch", "in/", "out.h5"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("vitlens.batch", run_name="__main__")
    assert isinstance(e.value.code, str)
    assert "-m vitlens.cli export" in e.value.code and "vitlens export" in e.value.code
