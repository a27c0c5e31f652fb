"""``vitlens figure``: distance / cls-grid / rollout-grid from an export file."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitlens
from vitlens.batch import ExportOptions, run_export

from .helpers import assert_one_line_error, run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("figure")
    (root / "in").mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, root / "in" / name)
    (root / "in" / "bad.jpg").write_text("not an image")
    model, cfg = vitlens.load_model("demo", device="cpu")
    out = root / "out.h5"
    run_export(model, cfg, root / "in", out, ExportOptions(batch_size=4, workers=0))
    return out


@pytest.mark.parametrize("kind, ext", [("distance", "png"), ("cls-grid", "pdf"), ("rollout-grid", "svg")])
def test_each_kind_writes_a_figure(export_file, tmp_path, kind, ext):
    out = tmp_path / f"fig.{ext}"
    r = run("figure", export_file, "--kind", kind, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert out.stat().st_size > 1000
    head = out.read_bytes()[:5]
    assert head.startswith({"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}[ext])


def test_rows_and_head_selection(export_file, tmp_path):
    out = tmp_path / "g.png"
    r = run("figure", export_file, "--kind", "cls-grid", "--rows", "2,0", "--head", "3", "--no-images", "--out", out)
    assert r.exit_code == 0, r.stderr
    with Image.open(out) as im:
        w, h = im.size
    assert w > h  # 2 rows x 6 layer columns


def test_cls_grid_uses_the_exported_maps(export_file, monkeypatch, tmp_path):
    """The panels are the file's cls_attention, fused over heads as asked (no model is run)."""
    from vitlens.export import figures

    seen = {}

    def spy(maps, images=None, **kw):
        seen["maps"] = np.asarray(maps)
        return real(maps, images, **kw)
    real = figures.cls_grid
    monkeypatch.setattr(figures, "cls_grid", spy)
    assert run("figure", export_file, "--kind", "cls-grid", "--rows", "0:2", "--head", "max",
               "--out", tmp_path / "s.png").exit_code == 0
    with vitlens.export.read(export_file) as f:
        expected = f["cls_attention"][[0, 1]].astype(np.float64).max(axis=2)
    np.testing.assert_array_equal(seen["maps"], expected)


def test_errors(export_file, tmp_path):
    assert_one_line_error(run("figure", export_file, "--kind", "distance", "--out", tmp_path / "x.gif"),
                          ".png, .pdf or .svg")
    assert_one_line_error(run("figure", export_file, "--kind", "rollout-grid", "--rows", "7", "--out",
                              tmp_path / "x.png"), "row 7 is out of range", "4 committed rows")
    assert_one_line_error(run("figure", export_file, "--kind", "cls-grid", "--head", "4", "--out",
                              tmp_path / "x.png"), "--head 4 is out of range")
    model, cfg = vitlens.load_model("demo", device="cpu")
    logits_only = tmp_path / "l.h5"
    with vitlens.export.read(export_file) as f:
        root = Path(f.attrs["input_root"])
    run_export(model, cfg, root, logits_only, ExportOptions(analyses=["logits"], workers=0))
    assert_one_line_error(run("figure", logits_only, "--kind", "rollout-grid", "--out", tmp_path / "y.png"),
                          "no rollout dataset", "--analyses")
