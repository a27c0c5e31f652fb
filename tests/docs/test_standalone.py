"""The repository stands alone (issue #14, items 16-18): the docs point at nothing outside
it (no DESIGN.md, no ``shared/`` data folder of the development machine), the licence and
citation files exist and agree with pyproject, and torch is not capped."""
from __future__ import annotations

import json
import re
import tomllib

import pytest

from ._support import DOCS, NOTEBOOKS, REPO

PAGES = sorted(DOCS.rglob("*.md")) + [REPO / "README.md"]
FORBIDDEN = re.compile(r"DESIGN(\.md)?\b|(?<![\w-])(\.\./)*shared/")


def _notebook_markdown(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "".join("".join(c["source"]) + "\n" for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", PAGES + sorted(NOTEBOOKS.glob("*.ipynb")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_docs_reference_nothing_outside_the_repository(path):
    text = _notebook_markdown(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    bad = [line.strip() for line in text.splitlines() if FORBIDDEN.search(line)]
    assert not bad, f"{path.name} refers to files outside the repository: {bad[:3]}"


def test_the_forbidden_pattern_catches_what_it_should():
    for line in ("see DESIGN.md §4", "definition in DESIGN §4", "../shared/data/cifar10", "shared/data/x"):
        assert FORBIDDEN.search(line), line
    for line in ("a shared memory", "tests/data/cue-conflict", "not-shared/x"):
        assert not FORBIDDEN.search(line), line


def test_data_sets_page_says_where_to_get_them():
    text = (DOCS / "datasets.md").read_text(encoding="utf-8")
    assert "github.com/rgeirhos/texture-vs-shape" in text and "CC BY 4.0" in text
    assert "cs.toronto.edu/~kriz/cifar" in text and "Krizhevsky" in text


def test_licence_citation_and_cite_section():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"]["text"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    cff = (REPO / "CITATION.cff").read_text()
    for key in ("cff-version:", "title:", "authors:", "license: MIT", f"version: {meta['version']}"):
        assert key in cff, key
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^## Cite", readme, re.M) and "CITATION.cff" in readme


def test_torch_has_floors_and_no_caps():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dep in meta["dependencies"]:
        name = re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0]
        assert "<" not in dep, f"{dep}: no upper caps in pyproject (exact pins live in .ci/run)"
        if name in ("torch", "torchvision"):
            assert ">=" in dep, dep
    assert "torch==" in (REPO / ".ci" / "run").read_text()
    assert any(d.startswith("ipywidgets") for d in meta["optional-dependencies"]["dev"])


def test_gpu_page_covers_device_precision_memory_and_torchrun():
    text = (DOCS / "howto" / "gpu.md").read_text(encoding="utf-8")
    for needle in ("--device", "--precision", "B · L · H · T²", "torchrun"):
        assert needle in text, needle
    nav = (REPO / "mkdocs.yml").read_text()
    assert "howto/gpu.md" in nav and "datasets.md" in nav and "howto/own-checkpoint.md" in nav


def test_every_library_package_is_installed_by_a_plain_pip_install():
    """pyproject lists the packages explicitly (cli/ installs as vitlens.cli): a package missing there
    works in an editable checkout and is absent from a plain `pip install .`, as CI installs it."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vitlens").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    data = tool.get("package-data", {})
    for pkg in listed - {"vitlens.cli"}:
        folder = REPO.joinpath(*pkg.split("."))
        shipped = {f.suffix for f in folder.iterdir() if f.is_file() and f.suffix not in (".py", ".pyc")}
        patterns = {pat.lstrip("*") for pat in data.get(pkg, [])}
        assert shipped <= patterns, f"{pkg}: files {sorted(shipped - patterns)} are not in package-data"
