"""The library speaks in parameters (issue #15): it never names CLI flags, never imports
the CLI, and reads no test switches from the environment. The checks read the source
(every string a message could be built from) and exercise the errors a user meets."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import vitlens

PKG = Path(vitlens.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _sources() -> list[Path]:
    """The library's sources. A non-editable install puts the CLI (top-level cli/ in the
    repository) inside the package as vitlens/cli: it is the front end, not the library."""
    return sorted(p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] != "cli")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_string_in_the_library_names_a_cli_flag():
    """Every string literal outside docstrings (messages are built from these, f-string parts
    included): no ``--flag``. Messages name Python parameters; the CLI translates them."""
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if FLAG.search(node.value):
                    found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value[:80]!r}")
    assert not found, "library strings that name CLI flags:\n" + "\n".join(found)


def test_the_library_never_imports_the_cli():
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                names = [mod] + ([f"{mod}.{a.name}" for a in node.names] if node.level else [])
                if node.level:  # relative: resolve against the file's package
                    pkg = path.relative_to(PKG.parent).with_suffix("").parts[:-node.level]
                    names = [".".join(pkg + tuple(n.split("."))) if n else ".".join(pkg) for n in names]
            if any(n == "vitlens.cli" or n.startswith("vitlens.cli.") for n in names):
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not found, f"vitlens/ imports vitlens.cli at {found}"


def test_shipped_code_reads_no_test_switches():
    for path in _sources():
        text = path.read_text()
        assert "VITLENS_TEST" not in text, f"{path} reads a test switch from the environment"


# ------------------------------------------------------------- the errors users meet
def _no_flag(e: BaseException) -> str:
    msg = str(e)
    assert not FLAG.search(msg), f"library message names a CLI flag: {msg}"
    return msg


def test_export_option_errors_name_parameters(demo, tmp_path):
    from vitlens.batch import ExportOptions, plan_analyses

    model, _ = demo
    cases = [dict(batch_size=0), dict(workers=-1), dict(limit=0), dict(dtype="int8"),
             dict(compression="zip"), dict(precision="fp8"), dict(analyses=["nope"]),
             dict(analyses=[], full=False), dict(layers=[0])]
    for kw in cases:
        with pytest.raises(vitlens.VitlensError) as info:
            plan_analyses(model, ExportOptions(**kw))
        msg = _no_flag(info.value)
        assert f"`{next(iter(kw))}" in msg, (kw, msg)


def test_existing_output_error_names_parameters(tmp_path):
    from vitlens.export.hdf5 import Column, ExportWriter

    out = tmp_path / "x.h5"
    cols = [Column("images/path", (), "str", 4)]
    with ExportWriter(out, cols, {}, {}, planned_rows=1):
        pass
    with pytest.raises(vitlens.VitlensError) as info:
        ExportWriter(out, cols, {}, {}, planned_rows=1)
    msg = _no_flag(info.value)
    assert "`resume=True`" in msg and "`overwrite=True`" in msg


def test_cli_translates_parameters_into_its_flags():
    import click

    from vitlens.cli.flags import to_flags

    @click.command()
    @click.option("--batch-size", type=int)
    @click.option("--resume", is_flag=True)
    @click.option("--pretrained/--no-pretrained", default=True)
    @click.option("--model", "model_name")
    @click.option("--checkpoint")
    def cmd(**kw):
        pass

    ctx = click.Context(cmd)
    assert to_flags("`batch_size` must be at least 1", ctx) == "--batch-size must be at least 1"
    assert to_flags("pass `resume=True` or `overwrite=True`", ctx) == "pass --resume or overwrite=True"
    assert to_flags("use `pretrained=False`", ctx) == "use --no-pretrained"
    assert to_flags("as `checkpoint=PATH`, or `name=demo`", ctx) == "as --checkpoint PATH, or --model demo"
    assert to_flags("no parameters here -- really", ctx) == "no parameters here -- really"
