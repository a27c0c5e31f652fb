"""``vitlens export`` in-process: exit codes 0/3, summary line, options, one-line errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitlens

from .helpers import assert_one_line_error, run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    (root / "cats").mkdir()
    shutil.copy(EXAMPLES / "chelsea.jpg", root / "cats" / "chelsea.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", root / "coffee.jpg")
    shutil.copy(EXAMPLES / "rocket.jpg", root / "rocket.jpg")
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, good) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(good, root, dirs_exist_ok=True)
    (root / "cats" / "broken.jpg").write_bytes(b"<html>404 not found</html>")
    return root


def test_all_ok_exits_0_with_summary(good, tmp_path):
    out = tmp_path / "o.h5"
    r = run("export", good, out, "--model", "demo", "--workers", "0", "--batch-size", "2")
    assert r.exit_code == 0, r.stderr
    assert "wrote" in r.stderr and "3 image(s), 3 ok, 0 failed" in r.stderr
    with vitlens.export.read(out) as f:
        assert f.paths == ["cats/chelsea.jpg", "coffee.jpg", "rocket.jpg"]
        assert f.attrs["command"].startswith("vitlens export ")


def test_some_failed_exits_3_and_says_so(mixed, tmp_path):
    out = tmp_path / "o.h5"
    r = run("export", mixed, out, "--model", "demo", "--workers", "0", "--analyses", "logits,rollout")
    assert r.exit_code == 3, r.stderr
    assert "4 image(s), 3 ok, 1 failed" in r.stderr
    assert "could not be read" in r.stderr
    with vitlens.export.read(out) as f:
        bad = f.paths.index("cats/broken.jpg")
        assert not f.ok[bad] and f.errors[bad]
        assert np.isnan(f["rollout"][bad]).all()


def test_quiet_prints_nothing_but_keeps_the_exit_status(mixed, tmp_path):
    r = run("export", mixed, tmp_path / "q.h5", "--model", "demo", "--workers", "0", "--quiet",
            "--analyses", "logits")
    assert r.exit_code == 3 and r.stderr == "" and r.stdout == ""


def test_list_file_glob_and_limit(good, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{good / 'rocket.jpg'}\n# a comment\n{good / 'cats' / 'chelsea.jpg'}\n")
    out = tmp_path / "l.h5"
    assert run("export", lst, out, "--model", "demo", "--workers", "0", "--analyses", "logits").exit_code == 0
    with vitlens.export.read(out) as f:
        assert [Path(p).name for p in f.paths] == ["rocket.jpg", "chelsea.jpg"]
    out2 = tmp_path / "g.h5"
    r = run("export", str(good / "*.jpg"), out2, "--model", "demo", "--workers", "0", "--limit", "1",
            "--analyses", "logits")
    assert r.exit_code == 0, r.stderr
    with vitlens.export.read(out2) as f:
        assert f.paths == ["coffee.jpg"]


def test_full_layers_heads_dtype(good, tmp_path):
    out = tmp_path / "full.h5"
    r = run("export", good, out, "--model", "demo", "--workers", "0", "--analyses", "cls", "--full",
            "--layers", "0,-1", "--heads", "1,3", "--dtype", "float32", "--compression", "none")
    assert r.exit_code == 0, r.stderr
    with vitlens.export.read(out) as f:
        assert sorted(k for k in f.keys() if k.startswith("attention/")) == ["attention/layer_00", "attention/layer_05"]
        a = f["attention/layer_05"]
        assert a.shape == (3, 2, 65, 65) and a.dtype == np.float32 and a.attrs["heads"] == [1, 3]
        # the stored heads are heads 1 and 3 of the CLS maps of the same layer
        np.testing.assert_allclose(a[:, :, 0, 1:].reshape(3, 2, 8, 8), f["cls_attention"][:, 5][:, [1, 3]], atol=1e-6)


def test_overlays_mirror_the_input_tree(mixed, tmp_path):
    ov = tmp_path / "ov"
    r = run("export", mixed, tmp_path / "o.h5", "--model", "demo", "--workers", "0", "--overlays", ov,
            "--analyses", "rollout")
    assert r.exit_code == 3
    made = sorted(p.relative_to(ov).as_posix() for p in ov.rglob("*.png"))
    # the naming scheme of `vitlens attend`: <image>__<model>__<method>_h<head>.png
    assert made == ["cats/chelsea__demo__rollout_hmean.png", "coffee__demo__rollout_hmean.png",
                    "rocket__demo__rollout_hmean.png"]
    with Image.open(ov / "cats" / "chelsea__demo__rollout_hmean.png") as im, \
            Image.open(mixed / "cats" / "chelsea.jpg") as src:
        assert im.size == src.size
    # a second export next to the first never overwrites its overlays ...
    r = run("export", mixed, tmp_path / "o2.h5", "--model", "demo", "--workers", "0", "--overlays", ov,
            "--analyses", "rollout")
    assert sorted(p.name for p in (ov / "cats").glob("*.png")) == ["chelsea__demo__rollout_hmean-2.png",
                                                                    "chelsea__demo__rollout_hmean.png"]
    # ... unless --overwrite
    r = run("export", mixed, tmp_path / "o2.h5", "--model", "demo", "--workers", "0", "--overlays", ov,
            "--analyses", "rollout", "--overwrite")
    assert len(list((ov / "cats").glob("*.png"))) == 2


def test_resume_continues_and_counts_the_whole_file(good, tmp_path):
    out = tmp_path / "r.h5"
    assert run("export", good, out, "--model", "demo", "--workers", "0", "--analyses", "logits",
               "--limit", "2").exit_code == 0
    r = run("export", good, out, "--model", "demo", "--workers", "0", "--analyses", "logits", "--limit", "2",
            "--resume")
    assert r.exit_code == 0 and "2 image(s), 2 ok" in r.stderr and "0 new" in r.stderr


@pytest.mark.parametrize("args, reasons", [
    (["--analyses", "logits,attn"], ["unknown analysis 'attn'", "logits, cls, rollout, distance"]),
    (["--layers", "0"], ["--layers and --heads", "add --full"]),
    (["--full", "--layers", "9"], ["layer 9 is out of range", "6-layer model"]),
    (["--precision", "fp16"], ["fp16 autocast needs a GPU", "bf16"]),
    (["--chunk", "0"], ["--chunk takes a positive number of images or 'auto'"]),
    (["--chunk", "some"], ["--chunk takes a positive number of images or 'auto'"]),
    (["--model", "resnet18", "--no-pretrained"], ["ResNet"]),
])
def test_user_errors_are_one_line(good, tmp_path, args, reasons):
    base = ["export", good, tmp_path / "e.h5", "--workers", "0"]
    if "--model" not in args:
        base += ["--model", "demo"]
    r = run(*base, *args)
    assert_one_line_error(r, *reasons)
    assert not (tmp_path / "e.h5").exists()


def test_existing_output_and_flag_conflicts(good, tmp_path):
    out = tmp_path / "x.h5"
    assert run("export", good, out, "--model", "demo", "--workers", "0", "--analyses", "logits").exit_code == 0
    r = run("export", good, out, "--model", "demo", "--workers", "0", "--analyses", "logits")
    assert_one_line_error(r, "already exists", "--resume", "--overwrite")
    r = run("export", good, out, "--model", "demo", "--workers", "0", "--analyses", "cls", "--resume")
    assert_one_line_error(r, "cannot resume", "different settings", "analyses")
    r = run("export", good, out, "--model", "demo", "--resume", "--overwrite")
    assert r.exit_code == 2 and "exclude each other" in r.stderr
    r = run("export", tmp_path / "nothing-here", out, "--model", "demo")
    assert_one_line_error(r, "no such file or folder")


def test_second_writer_gets_a_clear_error(good, tmp_path):
    from vitlens.export.hdf5 import OutputLock

    out = tmp_path / "busy.h5"
    with OutputLock(out):
        r = run("export", good, out, "--model", "demo", "--workers", "0", "--overwrite")
    assert_one_line_error(r, "being written by another vitlens export")


def test_decoding_in_worker_processes(mixed, tmp_path):
    out = tmp_path / "w.h5"
    r = run("export", mixed, out, "--model", "demo", "--workers", "2", "--batch-size", "3", "--analyses", "logits")
    assert r.exit_code == 3, r.stderr
    ref = tmp_path / "w0.h5"
    run("export", mixed, ref, "--model", "demo", "--workers", "0", "--batch-size", "3", "--analyses", "logits")
    with vitlens.export.read(out) as a, vitlens.export.read(ref) as b:
        assert a.paths == b.paths
        np.testing.assert_array_equal(a["logits"][:], b["logits"][:])


def test_chunked_export_equals_the_default_one(good, tmp_path):
    """--chunk 1 (each layer computed one image at a time) writes the values of the default
    CPU export (whole layers) to float32 rounding, the rest of the file alike."""
    outs = {}
    for label, extra in {"whole": [], "chunked": ["--chunk", "1"], "auto": ["--chunk", "auto"]}.items():
        outs[label] = tmp_path / f"{label}.h5"
        r = run("export", good, outs[label], "--model", "demo", "--workers", "0", "--batch-size", "2",
                "--dtype", "float32", *extra)
        assert r.exit_code == 0, r.stderr
    with vitlens.export.read(outs["whole"]) as a:
        want = {k: a[k][:] for k in a.keys()}
    for label in ("chunked", "auto"):
        with vitlens.export.read(outs[label]) as b:
            assert set(b.keys()) == set(want)
            for k in want:
                if want[k].dtype.kind == "f":
                    np.testing.assert_allclose(b[k][:], want[k], atol=1e-6, rtol=1e-5, err_msg=k)
                else:
                    np.testing.assert_array_equal(b[k][:], want[k], err_msg=k)
