"""Every notebook in notebooks/ runs top to bottom without an error (nbclient), and is stored
without outputs.

One test per notebook. To keep the suite fast, the notebooks share one Jupyter kernel
(torch, timm and matplotlib are imported once); before each notebook the kernel's namespace
is wiped with ``%reset -f`` and its working folder set to notebooks/, so a notebook that
relies on a name another notebook defined still fails. Torch runs single-threaded
(``OMP_NUM_THREADS=1``), like the rest of the suite, and figures are rendered at 50 dpi.
"""
from __future__ import annotations

import os
import time

import pytest

from ._support import NOTEBOOKS, require

PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300

RESET = """%reset -f
import os
os.chdir({cwd!r})
import matplotlib.pyplot
matplotlib.pyplot.close("all")
matplotlib.rcParams["figure.dpi"] = 50  # the test checks that figures draw; small ones draw faster
del os, matplotlib"""


def test_the_documented_notebooks_exist():
    # docs/index.md lists these five
    assert {p.stem for p in PATHS} >= {"01_quickstart", "02_heads", "03_shape_bias", "04_export", "05_swin"}, PATHS


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_stored_without_outputs(path):
    import json

    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{path.name} cell {i} has stored outputs: clear them before committing "
                f"(jupyter nbconvert --clear-output --inplace {path.name})")


@pytest.fixture(scope="module")
def kernel(cifar10_archive):
    require("nbclient", "nbformat", "ipykernel", extra="dev")
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    if cifar10_archive is not None and not env.get("VITLENS_CIFAR10"):   # as a user points the notebooks at it
        env["VITLENS_CIFAR10"] = str(cifar10_archive)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
    km.start_kernel(cwd=str(NOTEBOOKS), env=env)
    try:
        yield km
    finally:
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path, kernel):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    nb.cells.insert(0, nbformat.v4.new_code_cell(RESET.format(cwd=str(NOTEBOOKS))))
    client = NotebookClient(nb, km=kernel, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    print(f"{path.name}: {n_code} code cells, {images} figures, {seconds:.1f} s")
    assert images >= 1, f"{path.name} drew no figure; each notebook tells its story with pictures"
    streams = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
    # captum imports tqdm.auto: without ipywidgets (in [dev]) a kernel prints "TqdmWarning: IProgress not found"
    assert "TqdmWarning" not in streams and "IProgress not found" not in streams, streams[-2000:]
