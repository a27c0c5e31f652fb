"""Helpers shared by the documentation tests (notebooks, docs snippets, docs build)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
NOTEBOOKS = REPO / "notebooks"

def require(*modules: str, extra: str) -> None:
    """Fail, naming the install command, unless every module is importable.

    The docs and notebook packages are part of ``.[dev]``, which the README's test
    command installs, so a missing one is a broken set-up, never a reason to skip
    (CI must not pass by silently skipping these checks).
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: pip install -e '.[{extra}]' "
                    f"(part of '.[dev]', the README's test set-up)")
