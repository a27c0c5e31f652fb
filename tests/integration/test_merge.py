"""Joining torchrun shards (vitlens.export.hdf5.merge_shards): self-contained by default,
a virtual view on request, and a view whose shard is missing is an error naming it in
``read``, ``vitlens inspect`` and ``vitlens figure`` (issue #14, item 2)."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import vitlens
from vitlens.cli.main import cli
from vitlens.errors import VitlensError
from vitlens.export.hdf5 import Column, ExportWriter, merge_shards, shard_path

ROWS = [3, 4]


def _shards(folder):
    """Two complete shard files as two ranks write them (same config apart from 'shard')."""
    rng = np.random.default_rng(1)
    cols = [Column("images/path", (), "str", 2), Column("images/ok", (), "bool", 2),
            Column("images/error", (), "str", 2), Column("rollout", (4, 4), "float32", 2, compression="gzip"),
            Column("logits", (10,), "float32", 2)]
    attrs = {"model": "demo", "grid_size": [4, 4], "command": "vitlens export in out.h5"}
    data, paths, start = [], [], 0
    for rank, n in enumerate(ROWS):
        p = shard_path(folder / "out.h5", rank)
        rows = {"images/path": [f"img{start + i}.png" for i in range(n)], "images/ok": np.ones(n, bool),
                "images/error": [""] * n, "rollout": rng.random((n, 4, 4), dtype=np.float32),
                "logits": rng.random((n, 10), dtype=np.float32)}
        cfg = {"model": "demo", "shard": {"rank": rank, "start": start}}
        with ExportWriter(p, cols, {**attrs, "shard_rank": rank}, cfg, planned_rows=n) as w:
            w.append(rows)
        data.append(rows)
        paths.append(p)
        start += n
    return paths, {k: np.concatenate([d[k] for d in data]) for k in ("rollout", "logits")}


def test_default_merge_is_self_contained_and_moves_alone(tmp_path):
    shards, ref = _shards(tmp_path)
    out = merge_shards(tmp_path / "out.h5", shards, command="torchrun --nproc_per_node=2 -m vitlens.batch in out.h5")
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    moved = shutil.move(str(out), alone / "out.h5")
    for s in shards:
        s.unlink()                                  # the shards are not needed any more
    with h5py.File(moved, "r") as h:                # plain HDF5 reader
        assert not h["rollout"].is_virtual
        assert h["rollout"].compression == "gzip" and h["rollout"].chunks[0] == 2
        np.testing.assert_array_equal(h["rollout"][:], ref["rollout"])
    with vitlens.export.read(moved) as f:
        assert f.rows == sum(ROWS) and f.complete
        np.testing.assert_array_equal(f["logits"][:], ref["logits"])
        assert f.paths == [f"img{i}.png" for i in range(sum(ROWS))]
        assert f.attrs["command"] == "torchrun --nproc_per_node=2 -m vitlens.batch in out.h5"
        assert "shard_rank" not in f.attrs and "shards" not in f.attrs
    r = CliRunner().invoke(cli, ["inspect", str(moved)])
    assert r.exit_code == 0 and "ok: 7  failed: 0" in r.stdout and "self-contained" in r.stdout


def test_virtual_view_is_opt_in_and_missing_shards_are_an_error(tmp_path):
    shards, ref = _shards(tmp_path)
    out = merge_shards(tmp_path / "view.h5", shards, virtual=True)
    with vitlens.export.read(out) as f:
        assert f._f["rollout"].is_virtual
        np.testing.assert_array_equal(f["rollout"][:], ref["rollout"])
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = alone / "view.h5"
    out.rename(moved)                                 # copied on its own, without the shards
    with pytest.raises(VitlensError) as info:
        vitlens.export.read(moved)
    assert str(alone / shards[0].name) in str(info.value) and "missing" in str(info.value)
    for args in (["inspect", str(moved)], ["figure", str(moved), "--kind", "rollout-grid", "--out",
                                           str(tmp_path / "f.png")]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1, r.stdout
        assert f"'{alone / shards[0].name}' is missing" in r.stderr and "ok:" not in r.stdout
    assert not (tmp_path / "f.png").exists()


def test_incomplete_shard_is_refused(tmp_path):
    shards, _ = _shards(tmp_path)
    with h5py.File(shards[1], "r+") as h:
        h.attrs["complete"] = False
    with pytest.raises(VitlensError, match="incomplete"):
        merge_shards(tmp_path / "out.h5", shards)
