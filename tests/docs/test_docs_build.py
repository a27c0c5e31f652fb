"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing pages,
unresolvable API references and docstring problems fail), offline, and its API reference
shows every public name of ``vitlens``."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ._support import REPO, require

EXTERNAL_ASSETS = re.compile(r"fonts\.googleapis\.com|fonts\.gstatic\.com|cdn\.jsdelivr\.net|unpkg\.com")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_click", extra="docs")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    # Not from the repository root: `python -m` puts the cwd first on sys.path, and the repo's
    # vitlens/ folder has no vitlens.cli (cli/ is installed as vitlens.cli), which mkdocs-click
    # imports. The docstrings are read from the sources (mkdocstrings `paths`, relative to mkdocs.yml).
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=tmp_path_factory.mktemp("cwd"), env=env, capture_output=True, text=True, timeout=300)
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or [proc.stderr[-3000:]])
    return out


def test_strict_build_writes_every_nav_page(site):
    import yaml

    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from pages(value)
            else:
                yield value

    nav_pages = list(pages(config["nav"]))
    assert "reference/cli.md" in nav_pages and "reference/api.md" in nav_pages
    for page in nav_pages:
        html = site / (page[:-3] + "/index.html" if page != "index.md" else "index.html")
        assert html.is_file(), f"{page} is in the nav but {html} was not built"


def test_site_needs_no_network(site):
    offenders = [p.relative_to(site).as_posix() for p in site.rglob("*.html")
                 if EXTERNAL_ASSETS.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"pages load fonts/scripts from the web: {offenders}"


def test_cli_reference_lists_every_command(site):
    from vitlens.cli.main import cli

    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for name in cli.commands:
        assert f"vitlens {name}" in html, f"command {name!r} missing from the CLI reference"
    assert "--model" in html and "--discard-ratio" in html
    # mkdocs-click's table style prints click 8.2+'s internal "Sentinel.UNSET" as a default
    assert "Sentinel" not in html, "CLI reference shows click internals; keep :style: plain"


def test_api_reference_documents_every_public_name(site):
    import vitlens

    html = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    missing = []
    for name in vitlens.__all__:
        obj = getattr(vitlens, name)
        if callable(obj):  # a rendered entry, wherever it is defined (id = its full path)
            found = re.search(rf'id="vitlens(\.\w+)*\.{re.escape(name)}"', html)
        else:              # constants have no docstring: named in the text
            found = f"<code>{name}</code>" in html
        if not found:
            missing.append(name)
    assert not missing, f"names in vitlens.__all__ without an entry in docs/reference/api.md: {missing}"
    assert "Abnar" in html, "rollout's docstring (with its paper reference) should be rendered"
