"""Reading: :func:`read` opens a file lazily and shows only its committed rows, also while an
export writes it or after its writer was killed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from vitlens.errors import VitlensError
from vitlens.export.hdf5.schema import COMMITTED_ATTR, _from_attr, check_schema


class Rows:
    """Lazy view of one row-indexed dataset, limited to the committed rows.

    Indexing reads from disk: ``rows[i]`` one image, ``rows[:, layer]`` one layer across
    images, ``rows[:]`` everything (``np.asarray(rows)`` too). String datasets come back
    as ``str``.
    """

    def __init__(self, ds: h5py.Dataset, n: int) -> None:
        self._ds = ds
        self._n = n
        self._str = h5py.check_string_dtype(ds.dtype) is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self._ds.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(object) if self._str else self._ds.dtype

    @property
    def chunks(self) -> tuple[int, ...] | None:
        return self._ds.chunks

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _from_attr(v) for k, v in self._ds.attrs.items()}

    @property
    def name(self) -> str:
        return self._ds.name.lstrip("/")

    def __len__(self) -> int:
        return self._n

    def _rows(self, key: Any) -> Any:
        n = self._n
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -n <= key < n:
                raise IndexError(f"row {key} is out of range: {self.name} has {n} committed rows")
            return int(key) % n
        if isinstance(key, slice):
            return slice(*key.indices(n))
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"a boolean row mask needs shape ({n},), got {arr.shape}")
            return np.flatnonzero(arr)
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"row indices out of range: {self.name} has {n} committed rows")
        return arr % n if arr.size else arr

    def __getitem__(self, key: Any) -> Any:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        rows = self._rows(key)
        ds = self._ds.asstr() if self._str else self._ds
        if isinstance(rows, np.ndarray):  # h5py wants increasing unique indices
            uniq, inverse = np.unique(rows, return_inverse=True)
            out = ds[(uniq, *rest)] if uniq.size else np.empty((0, *self._ds.shape[1:]), self.dtype)
            return np.asarray(out)[inverse]
        return ds[(rows, *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self[:])
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"<vitlens Rows {self.name} shape={self.shape} dtype={self.dtype}>"


class ExportFile:
    """A ``vitlens/1`` export opened by :func:`read`: metadata now, arrays on demand.

    Attributes:
        path: the file.
        attrs: root attributes as Python values (``model``, ``grid_size``, ...).
        rows: committed rows (images); datasets are viewed up to this row.
        schema: the file's schema string.
    """

    def __init__(self, path: str | os.PathLike[str], locking: bool | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VitlensError(f"no such file: '{self.path}'; pass the OUTPUT.h5 that `vitlens export` wrote")
        try:
            self._f = _open_read(self.path, locking)
        except OSError as e:
            raise VitlensError(f"'{self.path}' cannot be opened as HDF5 ({' '.join(str(e).split())}); "
                               f"is it a vitlens export?") from None
        try:
            self.schema = str(_from_attr(self._f.attrs.get("schema")) if "schema" in self._f.attrs else None)
            check_schema(self._f.attrs.get("schema"), self.path)
            self.attrs = {k: _from_attr(v) for k, v in self._f.attrs.items()}
            self.rows = int(self.attrs.get(COMMITTED_ATTR, 0))
            self._check_shards()
        except BaseException:
            self._f.close()
            raise

    def _check_shards(self) -> None:
        """A virtual view (``merge_shards(virtual=True)``) reads its shards by relative name:
        refuse it, naming the file, when one is gone (HDF5 would silently give fill values)."""
        shards = self.attrs.get("shards")
        if not shards:
            return
        if isinstance(shards, str):
            shards = [shards]
        missing = [s for s in shards if not (self.path.parent / s).is_file()]
        if missing:
            where = self.path.parent / missing[0]
            raise VitlensError(f"'{self.path}' is a virtual view over {len(shards)} shard file(s) and "
                               f"'{where}' is missing{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                               f"put the shards back beside it, or merge them into one self-contained file "
                               f"(vitlens.export.hdf5.merge_shards, the default of a torchrun export)")

    # ------------------------------------------------------------------ access
    def keys(self) -> list[str]:
        """Row-indexed dataset paths, e.g. ``["attention_distance", "cls_attention", "images/ok", ...]``."""
        out: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out.append(name)
        self._f.visititems(visit)
        return sorted(out)

    def __contains__(self, name: str) -> bool:
        return name in self._f and isinstance(self._f[name], h5py.Dataset)

    def __getitem__(self, name: str) -> Rows:
        if name not in self:
            raise KeyError(f"'{self.path}' has no dataset {name!r}; it has {self.keys()}")
        return Rows(self._f[name], self.rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    @property
    def paths(self) -> list[str]:
        """``images/path`` of every committed row."""
        return list(self["images/path"][:])

    @property
    def ok(self) -> np.ndarray:
        """``images/ok`` of every committed row (bool)."""
        return np.asarray(self["images/ok"][:], dtype=bool)

    @property
    def errors(self) -> list[str]:
        return list(self["images/error"][:])

    @property
    def complete(self) -> bool:
        """Every planned row is committed."""
        return bool(self.attrs.get("complete", False))

    @property
    def config(self) -> dict[str, Any]:
        try:
            return json.loads(self.attrs.get("config", "{}"))
        except ValueError:
            return {}

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "ExportFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<vitlens ExportFile '{self.path}' {self.schema} rows={self.rows} model={self.attrs.get('model')!r}>"


def _swmr_capable(f: h5py.File) -> bool:
    """A file with the version-3 superblock SWMR needs (older vitlens/1 files have version 0)."""
    return f.id.get_create_plist().get_version()[0] >= 3


def _open_read(path: Path, locking: bool | None = None) -> h5py.File:
    """Open for reading: any vitlens/1 file, also while an export writes it or after its writer died.

    Files written in SWMR mode carry "open for SWMR writing" in their superblock while a
    writer has them open and after it was killed; HDF5 then opens them only for SWMR
    reading (``swmr=True``). A non-SWMR writer's HDF5 lock is bypassed (a snapshot).
    """
    kw = {} if locking is None else {"locking": locking}
    try:
        return h5py.File(path, "r", **kw)
    except OSError as e:
        msg = str(e)
        if "SWMR" in msg or "already open for write" in msg:
            return h5py.File(path, "r", swmr=True, **kw)
        if "lock" in msg and locking is None:
            try:
                return h5py.File(path, "r", locking=False)
            except OSError as e2:
                if "SWMR" in str(e2) or "already open for write" in str(e2):
                    return h5py.File(path, "r", swmr=True, locking=False)
                raise
        raise


def read(path: str | os.PathLike[str], locking: bool | None = None) -> ExportFile:
    """Open a ``vitlens export`` file for lazy reading.

    Example::

        with vitlens.export.read("out.h5") as f:
            f.attrs["model"], f.rows
            f["rollout"][0]               # one image, [gh, gw]
            f["cls_attention"][:, -1]     # last layer of every image, [N, H, gh, gw]

    Only committed rows are visible (a file an export is still writing, or one a crash
    interrupted, shows the batches committed so far). A file an export is writing, or
    whose writer was killed, is opened for SWMR reading (``swmr=True``; files of older
    versions: without HDF5's lock): you read a snapshot.

    Args:
        path: the ``.h5`` file.
        locking: passed to h5py (None: HDF5's default, falling back to no locking when a
            writer holds the file).

    Raises:
        VitlensError: not HDF5, not a vitlens export, or an unknown major schema version.
    """
    return ExportFile(path, locking=locking)
