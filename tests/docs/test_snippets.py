"""Every ```python block in docs/**/*.md (and README.md) runs.

One test per page. The blocks of a page run in order in one namespace, like a reader
pasting them into one session, in a temporary folder where the repository's ``examples/``
and ``tests/data/`` are available under those names (paths in the docs are written
relative to the repository root). Hub downloads are switched off (``HF_HUB_OFFLINE=1``),
so a snippet that needs the network fails fast instead of hanging.

A block that must not run (it needs downloads, a GPU, or data you do not have) is marked
with an HTML comment on the last non-blank line before its fence::

    <!-- no-run -->
    ```python
    ...
    ```

(``<!-- no-run: reason -->`` works too). Anything that is not Python goes in ```console /
```text blocks, which are never run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._support import DOCS, REPO

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
NO_RUN = re.compile(r"^\s*<!--\s*no-run\b.*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int            # 1-based line of the first code line
    code: str
    run: bool


def blocks(page: Path) -> list[Block]:
    """The ```python blocks of a Markdown page, in order (fences of any language are tracked,
    so a ```python line inside a ```markdown example is not mistaken for a block)."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    last_text = ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                last_text = lines[i]
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        lang = info.split()[0].lower() if info else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence) and not close["info"].strip():
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if lang == "python":
            out.append(Block(page, i + 2, "\n".join(body) + "\n", run=not NO_RUN.match(last_text)))
        last_text = lines[j] if j < len(lines) else ""
        i = j + 1
    return out


PAGES = sorted(p for p in [*DOCS.rglob("*.md"), REPO / "README.md"] if any(b.run for b in blocks(p)))


def test_pages_with_snippets_are_found():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert {"docs/index.md", "docs/quickstart.md", "docs/howto/capture-in-python.md"} <= names, names


def test_block_parser_on_a_known_page(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n```python\na = 1\n```\n\n<!-- no-run: needs a GPU -->\n```python\nb = 2\n```\n"
                    "````markdown\n```python\nc = 3\n```\n````\n- item\n\n    ```python\n    d = 4\n    ```\n"
                    "```console\n$ e\n```\n", encoding="utf-8")
    got = [(b.line, b.code, b.run) for b in blocks(page)]
    assert got == [(3, "a = 1\n", True), (8, "b = 2\n", False), (18, "d = 4\n", True)]


@pytest.fixture
def docs_cwd(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(REPO / "tests" / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_page_snippets_run(page, docs_cwd):
    namespace: dict = {"__name__": "__docs__"}
    try:
        for block in blocks(page):
            if not block.run:
                continue
            where = f"{page.relative_to(REPO)}:{block.line}"
            code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
            try:
                exec(code, namespace)
            except Exception as e:
                raise AssertionError(f"the ```python block at {where} raised {type(e).__name__}: {e}") from e
    finally:
        import sys

        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
