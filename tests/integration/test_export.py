"""HDF5 export (schema vitlens/1): values, failed rows, schema checks, locking, resume rules.

Exported rows are compared with the in-memory analyses run image by image, and with
slow direct implementations of the definitions (DESIGN.md §4) computed from the full
attention maps the same export stored (``--full``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import vitlens
from vitlens.batch import ExportOptions, run_export
from vitlens.errors import VitlensError
from vitlens.export import hdf5

from ..conftest import EXAMPLES

BATCH = 3


def make_inputs(root: Path) -> Path:
    """8 real images in two folders (JPEG photos, CIFAR-like PNGs incl. grey and RGBA) + 1 corrupt file."""
    (root / "photos").mkdir(parents=True)
    (root / "synthetic").mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg")):
        shutil.copy(p, root / "photos" / p.name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "synthetic" / "a_rgb.png")
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), mode="L").save(root / "synthetic" / "b_grey.png")
    (root / "synthetic" / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    Image.fromarray(rng.integers(0, 256, (24, 48, 4), dtype=np.uint8), mode="RGBA").save(root / "synthetic" / "d_rgba.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "synthetic" / "e_big.png")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo):
    """One export of every analysis plus float32 full maps of every layer."""
    tmp = tmp_path_factory.mktemp("export")
    inputs = make_inputs(tmp / "in")
    out = tmp / "out.h5"
    model, cfg = demo
    summary = run_export(model, cfg, inputs, out,
                         ExportOptions(batch_size=BATCH, workers=0, full=True, dtype="float32"))
    return inputs, out, summary


def test_summary_and_rows_in_input_order(exported):
    inputs, out, summary = exported
    expected = [p.relative_to(inputs).as_posix() for p in vitlens.find_images(inputs)]
    assert len(expected) == 9
    assert (summary.rows, summary.ok, summary.failed, summary.new_rows) == (9, 8, 1, 9)
    with vitlens.export.read(out) as f:
        assert f.rows == 9 and f.complete
        assert f.paths == expected
        assert f.attrs["schema"] == "vitlens/1"
        assert f.attrs["model"] == "demo"
        assert f.attrs["grid_size"] == [8, 8] and f.attrs["patch_size"] == [4, 4]
        assert f.attrs["input_size"] == [32, 32]
        assert f.attrs["num_prefix_tokens"] == 1 and f.attrs["prefix_names"] == ["cls"]
        assert f.attrs["num_layers"] == 6 and f.attrs["num_heads"] == 4
        for key in ("vitlens_version", "checkpoint", "pretrained", "mean", "std", "created", "command"):
            assert key in f.attrs
        assert f["logits"].shape == (9, 10) and f["logits"].dtype == np.float32
        assert f["cls_attention"].shape == (9, 6, 4, 8, 8)
        assert f["rollout"].shape == (9, 8, 8) and f["rollout"].dtype == np.float32
        assert f["attention_distance"].shape == (9, 6, 4)
        assert f["attention/layer_05"].shape == (9, 4, 65, 65)
        assert f["attention/layer_05"].attrs["heads"] == [0, 1, 2, 3]


def test_failed_row_is_recorded_and_nan(exported):
    _, out, _ = exported
    with vitlens.export.read(out) as f:
        ok, errors, paths = f.ok, f.errors, f.paths
        bad = paths.index("synthetic/c_corrupt.jpg")
        assert ok.tolist() == [i != bad for i in range(9)]
        assert "truncated or corrupt" in errors[bad] or "not a recognised" in errors[bad]
        assert all(e == "" for i, e in enumerate(errors) if i != bad)
        for name in ("logits", "cls_attention", "rollout", "attention_distance", "attention/layer_00"):
            assert np.isnan(f[name][bad]).all(), name
            assert np.isfinite(f[name][np.flatnonzero(ok)]).all(), name


def test_exported_values_equal_in_memory_analyses(exported, demo):
    """Each image alone through vitlens.capture + the public analyses gives the file's rows."""
    inputs, out, _ = exported
    model, cfg = demo
    with vitlens.export.read(out) as f:
        rows = {k: f[k][:] for k in ("logits", "cls_attention", "rollout", "attention_distance")}
        paths, ok = f.paths, f.ok
    for i, rel in enumerate(paths):
        if not ok[i]:
            continue
        x = vitlens.preprocess(vitlens.load_image(inputs / rel), cfg).tensor[None]
        with torch.no_grad(), vitlens.capture(model) as cache:
            logits = model(x)
        cls = torch.stack([vitlens.cls_attention(cache, layer=l, head=None) for l in range(6)], 1)
        torch.testing.assert_close(torch.from_numpy(rows["logits"][i]), logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(rows["cls_attention"][i]), cls[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(rows["rollout"][i]), vitlens.rollout(cache)[0],
                                   atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(rows["attention_distance"][i]),
                                   vitlens.mean_attention_distance(cache)[0], atol=1e-4, rtol=1e-4)


def test_exported_values_match_direct_definitions(exported):
    """CLS maps, rollout and mean distance recomputed with plain loops from the stored full maps."""
    _, out, _ = exported
    with vitlens.export.read(out) as f:
        i = int(np.flatnonzero(f.ok)[0])
        A = np.stack([f[f"attention/layer_{l:02d}"][i] for l in range(6)]).astype(np.float64)  # [L, H, T, T]
        cls, roll, dist = f["cls_attention"][i], f["rollout"][i], f["attention_distance"][i]
    L, H, T, _ = A.shape
    np.testing.assert_allclose(cls, A[:, :, 0, 1:].reshape(L, H, 8, 8), atol=1e-6)
    # rollout (Abnar & Zuidema 2020): mean heads, 0.5 A + 0.5 I, row-normalise, R = A_L ... A_1
    R = np.eye(T)
    for l in range(L):
        a = 0.5 * A[l].mean(0) + 0.5 * np.eye(T)
        a /= a.sum(1, keepdims=True)
        R = a @ R
    m = R[0, 1:] / R[0, 1:].sum()
    np.testing.assert_allclose(roll.reshape(-1), m, atol=1e-6)
    # mean attention distance: patch queries, patch keys renormalised, pixel distance of patch centres
    ys, xs = np.divmod(np.arange(64), 8)
    centres = np.stack([ys * 4 + 2.0, xs * 4 + 2.0], 1)
    D = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    for l in range(L):
        for h in range(H):
            w = A[l, h, 1:, 1:]
            w = w / w.sum(1, keepdims=True)
            expected = np.mean([(w[q] * D[q]).sum() for q in range(64)])
            assert dist[l, h] == pytest.approx(expected, rel=1e-4), (l, h)


def test_full_maps_are_attention_probabilities(exported):
    _, out, _ = exported
    with vitlens.export.read(out) as f:
        good = np.flatnonzero(f.ok)
        a = f["attention/layer_03"][good]
        assert f["attention/layer_03"].chunks == (1, 4, 65, 65)  # chunked per image
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


def test_chunks_follow_the_common_reads(exported):
    _, out, _ = exported
    with h5py.File(out) as f:
        assert f["cls_attention"].chunks[1:] == (1, 4, 8, 8)  # one layer per chunk
        assert BATCH % f["cls_attention"].chunks[0] == 0      # whole chunks per batch
        assert f["rollout"].chunks[1:] == (8, 8)
        assert f["logits"].compression == "gzip"


def test_default_dtype_float16_and_analysis_subset(tmp_path, demo, exported):
    inputs, _, _ = exported
    out = tmp_path / "sub.h5"
    model, cfg = demo
    run_export(model, cfg, inputs, out, ExportOptions(analyses=["cls", "logits"], batch_size=4, limit=5,
                                                      compression="lzf"))
    with vitlens.export.read(out) as f:
        assert f.rows == 5
        assert set(f.keys()) == {"images/path", "images/ok", "images/error", "logits", "cls_attention"}
        assert f["cls_attention"].dtype == np.float16
        assert f.attrs["cls_attention_omitted"] if "cls_attention_omitted" in f.attrs else True
    with h5py.File(out) as h:
        assert h["cls_attention"].compression == "lzf"


def test_model_without_cls_omits_cls_attention(tmp_path, exported):
    import timm

    inputs, _, _ = exported
    torch.manual_seed(0)
    model = timm.create_model("vit_medium_patch16_gap_256", pretrained=False, img_size=32, patch_size=8,
                              depth=2, embed_dim=64, num_heads=2, num_classes=5).eval()
    loaded = vitlens.load_model(model, device="cpu")
    out = tmp_path / "gap.h5"
    run_export(loaded.model, loaded.data_config, inputs, out, ExportOptions(batch_size=4, limit=4))
    with vitlens.export.read(out) as f:
        assert "cls_attention" not in f
        assert "no CLS token" in f.attrs["cls_attention_omitted"]
        assert f["rollout"].shape == (4, 4, 4)
        np.testing.assert_allclose(f["rollout"][:].sum((1, 2)), 1.0, rtol=1e-5)
    with pytest.raises(VitlensError, match="no CLS token"):
        run_export(loaded.model, loaded.data_config, inputs, tmp_path / "x.h5", ExportOptions(analyses=["cls"]))


# ------------------------------------------------------------------- reading rules
def _copy(src: Path, dst: Path, **attrs) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for k, v in attrs.items():
            if v is None:
                del f.attrs[k]
            else:
                f.attrs[k] = v
    return dst


def test_unknown_major_schema_version_is_refused(exported, tmp_path):
    _, out, _ = exported
    newer = _copy(out, tmp_path / "v2.h5", schema="vitlens/2")
    with pytest.raises(VitlensError, match=r"vitlens/2.*newer major version.*reads 'vitlens/1'"):
        vitlens.export.read(newer)
    minor = _copy(out, tmp_path / "v1_3.h5", schema="vitlens/1.3")
    with vitlens.export.read(minor) as f:
        assert f.rows == 9
    foreign = _copy(out, tmp_path / "none.h5", schema=None)
    with pytest.raises(VitlensError, match="not a vitlens export"):
        vitlens.export.read(foreign)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(VitlensError, match="cannot be opened as HDF5"):
        vitlens.export.read(tmp_path / "junk.h5")


def test_reader_shows_only_committed_rows(exported, tmp_path):
    _, out, _ = exported
    part = _copy(out, tmp_path / "part.h5", rows_committed=np.int64(4))
    with vitlens.export.read(part) as f:
        assert f.rows == 4 and len(f.paths) == 4
        assert f["cls_attention"].shape == (4, 6, 4, 8, 8)
        assert f["rollout"][-1].shape == (8, 8)
        assert np.asarray(f["logits"]).shape == (4, 10)
        assert f["cls_attention"][:, -1].shape == (4, 4, 8, 8)      # one layer across images
        assert f["logits"][[3, 0, 3]].shape == (3, 10)              # fancy indexing, any order
        with pytest.raises(IndexError, match="4 committed rows"):
            f["rollout"][4]


# ------------------------------------------------------------------ writer rules
def test_second_writer_is_refused_and_first_file_survives(exported, tmp_path, demo):
    inputs, _, _ = exported
    model, cfg = demo
    out = tmp_path / "locked.h5"
    run_export(model, cfg, inputs, out, ExportOptions(batch_size=4, limit=4, analyses=["logits"]))
    before = vitlens.export.read(out)
    before_logits = before["logits"][:]
    before.close()
    with hdf5.OutputLock(out):  # as a running export holds it
        for opts in (ExportOptions(overwrite=True, analyses=["logits"]), ExportOptions(resume=True, analyses=["logits"])):
            with pytest.raises(VitlensError, match="being written by another vitlens export"):
                run_export(model, cfg, inputs, out, opts)
    with vitlens.export.read(out) as f:
        np.testing.assert_array_equal(f["logits"][:], before_logits)
    assert not Path(str(out) + ".lock").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_reader_arriving_as_the_file_appears_does_not_break_the_writer(exported, tmp_path, demo, monkeypatch, resume):
    """A reader (progress poller, `vitlens inspect`) that opens OUTPUT the moment the
    writer renames it into place, and stays open: the export still runs to the end.
    (The writer used to close the file and reopen it for writing after the rename; a
    reader in between held HDF5's shared lock and the reopen failed.)"""
    inputs, full, _ = exported
    model, cfg = demo
    out = tmp_path / "watched.h5"
    opts = dict(batch_size=BATCH, workers=0, full=True, dtype="float32")  # as `exported` was written
    if resume:  # a crashed file (its writer died): resume rebuilds it and renames the copy in
        shutil.copy(full, out)
        with h5py.File(out, "r+") as f:
            f.attrs.update(rows_committed=np.int64(BATCH), complete=False, open_for_writing=True)
    readers = []
    real_replace = os.replace

    def replace_then_read(src, dst):
        real_replace(src, dst)
        if Path(dst) == out:
            readers.append(vitlens.export.read(out))  # HDF5's default locking

    monkeypatch.setattr(os, "replace", replace_then_read)
    try:
        s = run_export(model, cfg, inputs, out, ExportOptions(**opts, resume=resume))
        assert len(readers) == 1
        assert readers[0].rows == (BATCH if resume else 0)  # the reader saw a valid file
    finally:
        for r in readers:
            r.close()
    assert (s.rows, s.resumed_from) == (9, BATCH if resume else 0)
    assert_same_export(full, out)


def test_existing_output_needs_resume_or_overwrite(exported, tmp_path, demo):
    inputs, _, _ = exported
    model, cfg = demo
    out = tmp_path / "o.h5"
    opts = ExportOptions(batch_size=4, limit=3, analyses=["logits"])
    run_export(model, cfg, inputs, out, opts)
    with pytest.raises(VitlensError, match="already exists.*`resume=True`.*`overwrite=True`"):
        run_export(model, cfg, inputs, out, opts)
    s = run_export(model, cfg, inputs, out, ExportOptions(batch_size=4, limit=3, analyses=["logits"], resume=True))
    assert (s.rows, s.new_rows, s.resumed_from) == (3, 0, 3)


@pytest.mark.parametrize("change", ["dtype", "analyses", "limit", "weights"])
def test_resume_refuses_different_settings(exported, tmp_path, demo, change):
    inputs, _, _ = exported
    model, cfg = demo
    out = tmp_path / "r.h5"
    base = dict(batch_size=2, limit=4, analyses=["logits", "cls"])
    run_export(model, cfg, inputs, out, ExportOptions(**base))
    with h5py.File(out, "r+") as f:  # pretend it stopped after the first batch
        f.attrs["rows_committed"] = np.int64(2)
    other = dict(base, resume=True)
    m = model
    if change == "dtype":
        other["dtype"] = "float32"
    elif change == "analyses":
        other["analyses"] = ["logits"]
    elif change == "limit":
        other["limit"] = 5
    else:
        m = vitlens.load_model("demo", device="cpu").model
        with torch.no_grad():
            m.head.bias.add_(1.0)
    with pytest.raises(VitlensError, match="cannot resume .* different settings"):
        run_export(m, cfg, inputs, out, ExportOptions(**other))
    with vitlens.export.read(out) as f:  # refused before anything changed
        assert f.rows == 2


def test_resume_after_partial_commit_equals_uninterrupted(exported, tmp_path, demo):
    """A file cut back to a committed prefix (rows past it still on disk) resumes to the full result."""
    inputs, _, _ = exported
    model, cfg = demo
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    opts = dict(batch_size=2, analyses=["logits", "cls", "rollout", "distance"])
    run_export(model, cfg, inputs, full, ExportOptions(**opts))
    shutil.copy(full, part)
    with h5py.File(part, "r+") as f:
        f.attrs["rows_committed"] = np.int64(4)
        f.attrs["complete"] = False
        f["logits"][4:6] = 123.0  # a batch written but never committed
    s = run_export(model, cfg, inputs, part, ExportOptions(**opts, resume=True))
    assert (s.resumed_from, s.new_rows, s.rows, s.failed) == (4, 5, 9, 1)
    assert_same_export(full, part)


def assert_same_export(a: Path, b: Path) -> None:
    with vitlens.export.read(a) as fa, vitlens.export.read(b) as fb:
        assert fa.rows == fb.rows and fa.complete and fb.complete
        assert fa.keys() == fb.keys()
        for k in fa.keys():
            x, y = fa[k][:], fb[k][:]
            if x.dtype.kind == "f":
                np.testing.assert_array_equal(x, y, err_msg=k)
            else:
                assert list(x) == list(y), k
        for k in ("model", "grid_size", "num_layers", "num_heads", "analyses"):
            assert fa.attrs[k] == fb.attrs[k]
        ca, cb = fa.config, fb.config
        ca.pop("shard", None), cb.pop("shard", None)
        assert ca == cb


def test_config_records_what_determines_the_contents(exported):
    _, out, _ = exported
    with vitlens.export.read(out) as f:
        cfg = f.config
    assert cfg["model"] == "demo" and len(cfg["weights_sha256"]) == 32
    assert cfg["inputs"]["count"] == 9 and cfg["dtype"] == "float32"
    assert json.dumps(cfg)  # plain JSON


def test_first_batch_as_probe_writes_what_the_zero_image_probe_writes(exported, tmp_path, demo):
    """A new file takes its geometry and row shapes from the first batch's own results; a
    resumed one (here: resume=True on a missing file) from one zero image. Same file either way."""
    inputs, _, _ = exported
    model, cfg = demo
    files = {}
    for resume in (False, True):
        out = tmp_path / f"resume{resume}.h5"
        s = run_export(model, cfg, inputs, out, ExportOptions(batch_size=BATCH, workers=0, dtype="float32",
                                                               resume=resume))
        assert (s.rows, s.failed) == (9, 1)
        files[resume] = out
    with h5py.File(files[False], "r") as a, h5py.File(files[True], "r") as b:
        names = []
        a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
        assert "rollout" in names and "cls_attention" in names
        for n in names:
            assert a[n].shape == b[n].shape and a[n].dtype == b[n].dtype and a[n].chunks == b[n].chunks, n
            np.testing.assert_array_equal(a[n][()], b[n][()], err_msg=n)
        assert json.loads(a.attrs["config"]) == json.loads(b.attrs["config"])


@pytest.mark.parametrize("resume", [False, True])
def test_progress_total_is_known_before_the_first_batch_runs(exported, tmp_path, demo, monkeypatch, resume):
    """The progress bar gets its total once, before any batch is analysed (a first batch on a
    big model takes a while); a resumed run reports only the rows it still has to do (here: none)."""
    import vitlens.batch as vb

    inputs, _, _ = exported
    model, cfg = demo
    out = tmp_path / "o.h5"
    if resume:
        run_export(model, cfg, inputs, out, ExportOptions(batch_size=BATCH, workers=0))
    events: list = []
    analyse = vb._analyse
    monkeypatch.setattr(vb, "_analyse", lambda *a, **k: (events.append("batch"), analyse(*a, **k))[1])
    run_export(model, cfg, inputs, out, ExportOptions(batch_size=BATCH, workers=0, resume=resume),
               total=lambda n: events.append(("total", n)))
    if resume:   # the one-image probe (the rows to resume after are known once the file is open), no batch left
        assert events == ["batch", ("total", 0)]
    else:
        assert events == [("total", 9), "batch", "batch", "batch"]
