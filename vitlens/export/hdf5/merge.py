"""Files rebuilt from other files: :func:`merge_shards` joins the per-rank files of a ``torchrun``
export; :func:`repair` rewrites a file whose writer was killed so any HDF5 tool opens it."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from vitlens.errors import VitlensError
from vitlens.export.hdf5.reader import read
from vitlens.export.hdf5.schema import COMMITTED_ATTR, LIBVER, STR_DTYPE
from vitlens.export.hdf5.writer import OutputLock, _temp_path


def merge_shards(output: str | os.PathLike[str], shards: Sequence[str | os.PathLike[str]], *,
                 virtual: bool = False, command: str | None = None) -> Path:
    """Join per-rank shard files into ``output``, rows in shard order.

    By default ``output`` is self-contained: every row-indexed dataset is copied from the
    shards (same chunks, compression and fill values), so the file can be copied, moved
    or archived alone and the shards deleted. ``virtual=True`` writes HDF5 virtual
    datasets instead (no copy, instant): the view reads the shards by file name,
    relative to ``output``'s folder, so they must stay beside it; a view whose shard is
    missing is refused by :func:`read` with the missing file's name.

    Root attributes come from the first shard, without the shard bookkeeping
    (``shard_rank``, ``shard_offset``...); ``command`` replaces the recorded command.

    Raises:
        VitlensError: a shard is incomplete or the shards disagree on schema or config.
    """
    out = Path(output)
    infos = []
    for s in shards:
        with read(s) as f:
            if not f.complete:
                raise VitlensError(f"shard '{s}' is incomplete ({f.rows} of {f.attrs.get('rows_planned')} rows); "
                                   f"rerun the export with `resume=True` before merging")
            infos.append((Path(s), f.rows, {k: _creation(f._f[k]) for k in f.keys()}, dict(f._f.attrs), f.config))
    first_cfg = {k: v for k, v in infos[0][4].items() if k != "shard"}
    for s, _, cols, _, cfg in infos[1:]:
        if cols.keys() != infos[0][2].keys() or {k: v for k, v in cfg.items() if k != "shard"} != first_cfg:
            raise VitlensError(f"shard '{s}' was written with other settings than '{infos[0][0]}'; "
                               f"rerun every rank with the same options")
    total = sum(n for _, n, *_ in infos)
    tmp = _temp_path(out)
    with OutputLock(out):
        try:
            with h5py.File(tmp, "w", libver=LIBVER) as f:
                _merged_attrs(f, infos, out, total, virtual, command)
                if virtual:
                    _write_view(f, infos, out, total)
                else:
                    _write_copy(f, infos, total)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _creation(ds: h5py.Dataset) -> dict[str, Any]:
    """What it takes to create a dataset like ``ds`` (per-row shape, dtype, chunks, filters, attrs)."""
    return {"shape": ds.shape[1:], "dtype": ds.dtype, "chunks": ds.chunks, "compression": ds.compression,
            "compression_opts": ds.compression_opts, "shuffle": ds.shuffle, "fillvalue": ds.fillvalue,
            "attrs": dict(ds.attrs)}


def _merged_attrs(f: h5py.File, infos: list, out: Path, total: int, virtual: bool, command: str | None) -> None:
    for k, v in infos[0][3].items():
        if not k.startswith("shard_"):
            f.attrs[k] = v
    cfg = dict(infos[0][4])
    cfg.pop("shard", None)
    f.attrs["config"] = json.dumps(cfg, sort_keys=True)
    if command:
        f.attrs["command"] = command
    f.attrs["merged_from"] = np.array([os.path.relpath(s, out.parent) for s, *_ in infos], dtype=STR_DTYPE)
    if virtual:
        f.attrs["shards"] = f.attrs["merged_from"]
    f.attrs["rows_planned"] = np.int64(total)
    f.attrs["complete"] = np.bool_(True)
    f.attrs["open_for_writing"] = np.bool_(False)
    f.attrs[COMMITTED_ATTR] = np.int64(total)


def _write_copy(f: h5py.File, infos: list, total: int) -> None:
    """Every dataset copied from the shards into ``f``, in bounded blocks."""
    for name, c in infos[0][2].items():
        kw: dict[str, Any] = {}
        if c["compression"]:
            kw.update(compression=c["compression"], compression_opts=c["compression_opts"])
        ds = f.create_dataset(name, shape=(total, *c["shape"]), maxshape=(None, *c["shape"]), dtype=c["dtype"],
                              chunks=c["chunks"], shuffle=c["shuffle"], fillvalue=c["fillvalue"], **kw)
        for k, v in c["attrs"].items():
            ds.attrs[k] = v
        row_bytes = max(1, int(np.prod(c["shape"], dtype=np.int64)) * max(c["dtype"].itemsize, 8))
        step = max(1, (8 << 20) // row_bytes)
        pos = 0
        for s, n, *_ in infos:
            with read(s) as src_file:
                src = src_file._f[name]
                for a in range(0, n, step):
                    b = min(n, a + step)
                    ds[pos + a:pos + b] = src[a:b]
            pos += n


def _write_view(f: h5py.File, infos: list, out: Path, total: int) -> None:
    """One virtual dataset per row-indexed dataset of the shards."""
    for name, c in infos[0][2].items():
        shape, dtype = c["shape"], c["dtype"]
        layout = h5py.VirtualLayout(shape=(total, *shape), dtype=dtype)
        pos = 0
        for s, n, *_ in infos:
            if n:
                rel = os.path.relpath(s, out.parent)
                layout[pos:pos + n] = h5py.VirtualSource(rel, name, shape=(n, *shape))
            pos += n
        is_float = np.dtype(dtype).kind == "f"
        ds = f.create_virtual_dataset(name, layout, fillvalue=np.nan if is_float else None)
        for k, v in c["attrs"].items():
            ds.attrs[k] = v


# ------------------------------------------------------------------------ repair
def repair(path: str | os.PathLike[str]) -> int:
    """Make a file whose writer was killed readable by any HDF5 tool; return its committed rows.

    A writer killed mid-export leaves its file marked "open for SWMR writing": h5py's plain
    ``File(path)``, ``h5ls`` and other tools refuse it ("file is already open for write")
    and only ``swmr=True`` readers (:func:`read`, ``--resume``) open it. ``repair`` copies
    the committed rows and every attribute into a fresh file (same chunks and filters) and
    puts it in place of the old one atomically. Rows past ``rows_committed`` (a batch the
    kill interrupted) are dropped; ``--resume`` can still continue the repaired file.
    A file that opens plainly already is left alone.

    Raises:
        VitlensError: an export is still writing the file, or it is not a vitlens export.
    """
    p = Path(path)
    with read(p) as f:
        n = f.rows
    try:
        with h5py.File(p, "r"):
            return n  # nothing to repair
    except OSError:
        pass
    tmp = _temp_path(p)
    with OutputLock(p):  # refuses while a writer runs
        try:
            with read(p, locking=False) as old, h5py.File(tmp, "w", libver=LIBVER) as new:
                for k, v in old._f.attrs.items():
                    new.attrs[k] = v
                new.attrs["open_for_writing"] = np.bool_(False)
                new.attrs["repaired"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                for name in old.keys():
                    src = old._f[name]
                    c = _creation(src)
                    kw: dict[str, Any] = {}
                    if c["compression"]:
                        kw.update(compression=c["compression"], compression_opts=c["compression_opts"])
                    ds = new.create_dataset(name, shape=(n, *c["shape"]), maxshape=(None, *c["shape"]),
                                            dtype=c["dtype"], chunks=c["chunks"], shuffle=c["shuffle"],
                                            fillvalue=c["fillvalue"], **kw)
                    for k, v in c["attrs"].items():
                        ds.attrs[k] = v
                    row_bytes = max(1, int(np.prod(c["shape"], dtype=np.int64)) * max(c["dtype"].itemsize, 8))
                    step = max(1, (8 << 20) // row_bytes)
                    for a in range(0, n, step):
                        b = min(n, a + step)
                        ds[a:b] = src[a:b]
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    return n
