"""Helpers shared by the documentation tests (notebooks, docs snippets, docs build)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
NOTEBOOKS = REPO / "notebooks"

#: Set to 1 (as .ci/run does) to turn a missing docs/notebook dependency into a failure
#: instead of a skip, so CI cannot pass by silently skipping these checks.
REQUIRE_ENV = "VITLENS_REQUIRE_DOCS"


def require(*modules: str, extra: str) -> None:
    """Skip (or fail, under VITLENS_REQUIRE_DOCS=1) unless every module is importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed: pip install -e '.[{extra}]'"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    pytest.skip(reason)
