"""``vitlens inspect``: model, rows ok/failed, datasets with shapes and dtypes; schema errors are one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import vitlens
from vitlens.batch import ExportOptions, run_export

from .helpers import assert_one_line_error, run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    (root / "in").mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / name, root / "in" / name)
    (root / "in" / "zz_empty.png").write_bytes(b"")
    model, cfg = vitlens.load_model("demo", device="cpu")
    out = root / "out.h5"
    run_export(model, cfg, root / "in", out, ExportOptions(batch_size=2, workers=0))
    return out


def test_inspect_prints_model_rows_and_datasets(export_file):
    r = run("inspect", export_file)
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    assert "vitlens/1" in text and "model: demo" in text
    assert "grid 8x8" in text and "6 layers x 4 heads" in text
    assert "rows: 3 committed of 3 planned (complete)" in text
    assert "ok: 2  failed: 1" in text
    for line in ("cls_attention       (3, 6, 4, 8, 8)        float16",
                 "rollout             (3, 8, 8)              float32",
                 "attention_distance  (3, 6, 4)              float32",
                 "logits              (3, 10)                float32",
                 "images/path         (3,)                   str"):
        assert line in text, text


def test_inspect_failed_lists_reasons(export_file):
    r = run("inspect", export_file, "--failed")
    assert "failed row 2: zz_empty.png: file is empty" in r.stdout


def test_inspect_json(export_file):
    r = run("inspect", export_file, "--json", "--failed")
    info = json.loads(r.stdout)
    assert info["rows"] == 3 and info["ok"] == 2 and info["failed"] == 1
    assert info["datasets"]["cls_attention"] == {"shape": [3, 6, 4, 8, 8], "dtype": "float16",
                                                  "chunks": info["datasets"]["cls_attention"]["chunks"]}
    assert info["failed_rows"][0]["path"] == "zz_empty.png"


def test_inspect_incomplete_file_says_how_to_continue(export_file, tmp_path):
    part = tmp_path / "part.h5"
    shutil.copy(export_file, part)
    with h5py.File(part, "r+") as f:
        f.attrs["rows_committed"] = np.int64(2)
        f.attrs["complete"] = False
        f.attrs["open_for_writing"] = True
    r = run("inspect", part)
    assert "died without closing the file" in r.stdout
    assert "rows: 2 committed of 3 planned (incomplete: continue with vitlens export ... --resume)" in r.stdout
    assert "ok: 2  failed: 0" in r.stdout


def test_inspect_refuses_unknown_schema_and_junk(export_file, tmp_path):
    newer = tmp_path / "v9.h5"
    shutil.copy(export_file, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["schema"] = "vitlens/9"
    assert_one_line_error(run("inspect", newer), "vitlens/9", "reads 'vitlens/1' only")
    junk = tmp_path / "junk.h5"
    junk.write_text("hello")
    assert_one_line_error(run("inspect", junk), "cannot be opened as HDF5")
    assert_one_line_error(run("inspect", tmp_path / "missing.h5"), "no such file")
