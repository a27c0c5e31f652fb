"""HDF5 export, schema ``vitlens/1`` (DESIGN.md §5, documented in ``docs/hdf5-schema.md``).

One file per export, one row per input image in input order. :class:`ExportWriter`
appends batches to resizable datasets and *commits* each one; :func:`read` opens a file
lazily and shows only committed rows; :func:`merge_shards` joins the per-rank files of a
``torchrun`` export into one self-contained file (or, on request, a view of HDF5 virtual
datasets); :func:`repair` makes a file whose writer was killed readable by any HDF5 tool.

Crash safety (tested with a real ``kill -9``):

1. every dataset is resized to ``committed + B`` and the batch written into it;
2. ``h5py.File.flush()`` (``H5Fflush``) writes the data and all metadata;
3. only then the root attribute ``rows_committed`` is set to ``committed + B`` and the
   file flushed again.

The writer keeps the file in SWMR write mode (:data:`LIBVER` format): HDF5 then flushes
metadata in dependency order and indexes chunks with structures whose blocks never
move, so a kill in the middle of step 2 cannot leave committed rows behind a dangling
address (without it a random-kill loop once found "addr overflow" on a committed row
after a chunk B-tree node split). A killed SWMR file opens for reading only with
``swmr=True``, which :func:`read` and ``--resume`` use, until :func:`repair`
(``vitlens inspect --repair``) rewrites it; files of earlier versions (superblock 0, no
SWMR) read and resume as before.

A kill before step 3 completes leaves ``rows_committed`` at the previous value, so
readers (which honour it) never see a half-written batch, and ``--resume`` shrinks the
datasets back to ``rows_committed`` and goes on from there. The second flush touches
one small object header only. Writers take an exclusive ``flock`` on ``OUTPUT.lock``
*before* opening the HDF5 file: a second writer gets a clear error instead of
truncating the file under the first (HDF5's own lock is checked only after
``O_TRUNC`` has emptied the file).

This module imports h5py and never runs a model.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from vitlens._util import jsonable as _jsonable
from vitlens.errors import VitlensError

__all__ = ["SCHEMA", "SCHEMA_MAJOR", "Column", "ExportWriter", "ExportFile", "Rows", "read", "merge_shards", "repair",
           "check_schema", "chunk_rows_for", "OutputLock", "shard_path", "COMMITTED_ATTR"]

SCHEMA = "vitlens/1"
SCHEMA_MAJOR = 1
#: Root attribute holding the number of committed rows; written last after every batch.
COMMITTED_ATTR = "rows_committed"
STR_DTYPE = h5py.string_dtype("utf-8")
#: File format of new files: the version-3 superblock and chunk indexes SWMR writing needs.
LIBVER = ("v110", "latest")
_SCHEMA_RE = re.compile(r"^vitlens/(\d+)(?:\.(\d+))?$")
#: Target uncompressed bytes per chunk for the row-chunked datasets.
CHUNK_BYTES = 256 * 1024


class SchemaError(VitlensError):
    """The file is not a vitlens export this version can read."""


# --------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Column:
    """One row-indexed dataset: ``name`` of shape ``(N, *shape)``.

    Attributes:
        name: HDF5 path, e.g. ``"cls_attention"`` or ``"images/ok"``.
        shape: per-row shape.
        dtype: ``"float16"``, ``"float32"``, ``"bool"`` or ``"str"``.
        chunk_rows: rows per chunk (the chunk covers the whole row otherwise, except
            ``chunk_inner`` can split the second axis, e.g. one layer).
        chunk_inner: chunk length along the second axis (None: the whole axis).
        compression: ``"gzip"``, ``"lzf"`` or None.
        attrs: extra dataset attributes (e.g. ``layer``, ``heads``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int
    chunk_inner: int | None = None
    compression: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def h5_dtype(self) -> Any:
        return STR_DTYPE if self.dtype == "str" else np.dtype(self.dtype)

    def chunks(self) -> tuple[int, ...]:
        inner = list(self.shape)
        if self.chunk_inner is not None and inner:
            inner[0] = self.chunk_inner
        return (self.chunk_rows, *inner)

    def fill(self) -> Any:
        if self.dtype in ("float16", "float32"):
            return np.nan
        if self.dtype == "bool":
            return False
        return None


def chunk_rows_for(row_bytes: int, batch_size: int, target: int = CHUNK_BYTES) -> int:
    """Rows per chunk: about ``target`` bytes, and a divisor of ``batch_size``.

    Dividing the batch size means a batch fills whole chunks, so a compressed chunk is
    written once instead of being re-compressed by every batch that touches it.
    """
    want = max(1, min(batch_size, target // max(row_bytes, 1)))
    return max(d for d in range(1, want + 1) if batch_size % d == 0)


def check_schema(value: Any, path: str | os.PathLike[str]) -> tuple[int, int]:
    """Parse a ``schema`` attribute; refuse anything but major version :data:`SCHEMA_MAJOR`.

    Raises:
        SchemaError: no/foreign schema, or a newer major version.
    """
    if isinstance(value, bytes):
        value = value.decode()
    if value is None:
        raise SchemaError(f"'{path}' is an HDF5 file but not a vitlens export (no 'schema' attribute); "
                          f"write one with `vitlens export`")
    m = _SCHEMA_RE.match(str(value))
    if not m:
        raise SchemaError(f"'{path}' has schema {value!r}, not a vitlens export schema "
                          f"(expected '{SCHEMA}'); write one with `vitlens export`")
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    if major != SCHEMA_MAJOR:
        newer = "a newer" if major > SCHEMA_MAJOR else "an older"
        raise SchemaError(f"'{path}' uses schema {value!r} ({newer} major version); this vitlens reads "
                          f"'{SCHEMA}' only. Install a vitlens that reads vitlens/{major} "
                          f"(e.g. `pip install -U vitlens`) or re-export the images with this one")
    return major, minor


def shard_path(path: str | os.PathLike[str], rank: int) -> Path:
    """``OUTPUT.h5`` -> ``OUTPUT.rank{r}.h5`` (the per-rank file of a torchrun export)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.rank{rank}{p.suffix or '.h5'}")


# ---------------------------------------------------------------------------- lock
class OutputLock:
    """Exclusive lock on ``OUTPUT.lock`` beside the output, held while a writer runs.

    ``fcntl.flock`` is released by the kernel when the process dies (also on
    ``kill -9``), so a crashed export never leaves a stale lock behind.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.target = Path(path)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: rely on HDF5's own file locking
            return self
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # named after the user's file, not the lock beside it
                raise VitlensError(_unwritable(self.target, e)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = ""
                try:
                    holder = self.path.read_text().strip()
                except OSError:
                    pass
                who = f" (process {holder})" if holder else ""
                raise VitlensError(
                    f"'{self.target}' is being written by another vitlens export{who}; wait for it to finish "
                    f"or stop it, or write to another OUTPUT. Two writers on one file would corrupt it") from None
            # the lock file may have been removed and re-created by a finishing writer: retry on a stale inode
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it; see the inode check in acquire
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# -------------------------------------------------------------------------- writer
def _attr_value(value: Any) -> Any:
    """Python value -> something h5py stores as a plain attribute (None -> "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.array(list(value), dtype=STR_DTYPE)
        return np.asarray(value)
    if isinstance(value, dict):
        return json.dumps(_jsonable(value), sort_keys=True)
    return value


def _unwritable(path: Path, e: OSError) -> str:
    """The message for an output that cannot be created, in terms of the user's file."""
    where = path.parent if str(path.parent) else Path(".")
    return (f"cannot write '{path}': {e.strerror or e} in folder '{where}'; choose a writable location "
            f"for the output")


def _temp_path(path: Path, pid: int | str | None = None) -> Path:
    """Where a new file is built before it is renamed to ``path``: one name per process
    (``pid`` defaults to this one's; ``"*"`` gives the glob of every process's)."""
    return path.with_name(f".{path.name}.creating-{os.getpid() if pid is None else pid}")


class ExportWriter:
    """Append batches of rows to a ``vitlens/1`` file and commit each one.

    Args:
        path: the output file.
        columns: every row-indexed dataset, including ``images/path``, ``images/ok``,
            ``images/error``.
        attrs: root attributes (schema metadata; ``schema`` and ``vitlens_version``
            are added).
        config: everything that determines the file's contents (model, options, input
            list hash); stored as JSON in the ``config`` attribute. ``resume=True``
            refuses a file whose config differs.
        planned_rows: rows this file will hold when complete.
        resume: continue an existing file after its committed rows.
        overwrite: replace an existing file. Without ``resume`` or ``overwrite`` an
            existing file is an error.
        before_commit: called as ``before_commit(first_row, end_row)`` after each batch's
            data is flushed and before its commit counter moves (tests inject a crash there).

    Use as a context manager; :meth:`append` commits one batch.
    """

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[Column], attrs: Mapping[str, Any],
                 config: Mapping[str, Any], planned_rows: int, *, resume: bool = False,
                 overwrite: bool = False, before_commit: Callable[[int, int], None] | None = None) -> None:
        self.path = Path(path)
        self.before_commit = before_commit
        self.columns = {c.name: c for c in columns}
        self.planned_rows = int(planned_rows)
        self.config = json.loads(json.dumps(_jsonable(dict(config)), sort_keys=True))
        self._lock = OutputLock(self.path)
        self._file: h5py.File | None = None
        self.committed = 0
        self.resumed_from = 0
        self._lock.acquire()
        try:
            exists = self.path.exists()
            if exists and resume:
                self._open_existing()
            elif exists and not overwrite:
                raise VitlensError(f"'{self.path}' already exists; pass `resume=True` to continue it after its "
                                   f"committed rows, `overwrite=True` to replace it, or choose another output path")
            else:
                self._create(attrs)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ open / create
    def _create(self, attrs: Mapping[str, Any]) -> None:
        """Build the empty file under a temporary name, then rename it into place.

        A kill while HDF5 creates the file (superblock, object headers, first flush) can
        leave a file HDF5 cannot open; the rename makes OUTPUT appear only complete
        (and an ``--overwrite`` keeps the old file readable until then).
        """
        tmp = _temp_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for stale in self.path.parent.glob(_temp_path(self.path, "*").name):  # we hold the lock
                stale.unlink(missing_ok=True)
            self._file = h5py.File(tmp, "w", libver=LIBVER)
            self._build(self._file, attrs)
            self._put_in_place(tmp)
        except OSError as e:  # named after the user's file, not the temporary one
            raise VitlensError(_unwritable(self.path, e)) from None
        finally:
            tmp.unlink(missing_ok=True)

    def _put_in_place(self, tmp: Path) -> None:
        """Start writing ``self._file`` (built at ``tmp``) and rename it to OUTPUT.

        The file stays open across the rename (POSIX renames the open inode): closing and
        reopening it by its final name let a reader that opened it in between (a progress
        poller, `vitlens inspect`) hold HDF5's shared lock, and the reopen for writing failed.
        """
        assert self._file is not None
        self._file.attrs["open_for_writing"] = np.bool_(True)
        self._start_swmr()
        os.replace(tmp, self.path)

    def _build(self, f: h5py.File, attrs: Mapping[str, Any]) -> None:
        from vitlens import __version__

        meta = {"schema": SCHEMA, "vitlens_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **attrs}
        for k, v in meta.items():
            f.attrs[k] = _attr_value(v)
        f.attrs["config"] = json.dumps(self.config, sort_keys=True)
        f.attrs["rows_planned"] = np.int64(self.planned_rows)
        f.attrs["complete"] = np.bool_(False)
        f.attrs["open_for_writing"] = np.bool_(False)
        for col in self.columns.values():
            kw: dict[str, Any] = {}
            if col.compression == "gzip":
                kw.update(compression="gzip", compression_opts=4, shuffle=True)
            elif col.compression == "lzf":
                kw.update(compression="lzf", shuffle=True)
            fill = col.fill()
            ds = f.create_dataset(col.name, shape=(0, *col.shape), maxshape=(None, *col.shape),
                                  dtype=col.h5_dtype(), chunks=col.chunks(),
                                  **({"fillvalue": fill} if fill is not None else {}), **kw)
            for k, v in col.attrs.items():
                ds.attrs[k] = _attr_value(v)
        f.attrs[COMMITTED_ATTR] = np.int64(0)

    def _open_existing(self) -> None:
        """Check the file against this run; continue it after its committed rows.

        A file a writer closed cleanly (Ctrl-C, finished) is truncated to
        ``rows_committed`` in place. A file whose writer died (``open_for_writing`` still
        set: ``kill -9``, OOM, power loss) is rebuilt: its committed rows are copied into a
        fresh file that replaces it. Reading committed rows of such a file is safe, but
        HDF5 metadata a kill interrupted mid-flush (e.g. written past the end-of-file
        address the superblock recorded) can make *modifying* it fail, so it is never
        written to again.
        """
        try:
            with _open_read(self.path) as f:
                check_schema(f.attrs.get("schema"), self.path)
                old_cfg = f.attrs.get("config", "{}")
                missing = [n for n in self.columns if n not in f]
                crashed = bool(f.attrs.get("open_for_writing", False))
        except OSError as e:
            raise VitlensError(f"cannot resume '{self.path}': HDF5 cannot open it ({' '.join(str(e).split())}); "
                               f"export again with `overwrite=True`") from None
        try:
            old = json.loads(old_cfg)
        except (TypeError, ValueError):
            old = {}
        if old != self.config:
            keys = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
            diffs = "; ".join(f"{k}: file has {old.get(k)!r}, now {self.config.get(k)!r}" for k in keys[:6])
            raise VitlensError(f"cannot resume '{self.path}': it was written with different settings ({diffs}); "
                               f"rerun with the same INPUT, model and options, or use `overwrite=True` to start over")
        if missing:
            raise VitlensError(f"cannot resume '{self.path}': datasets {missing} are missing; use `overwrite=True`")
        if not crashed:
            try:
                self._truncate_in_place()
                return
            except (OSError, RuntimeError, KeyError, ValueError):
                if self._file is not None:
                    self._file.close()
                    self._file = None
        self._rebuild()

    def _truncate_in_place(self) -> None:
        f = h5py.File(self.path, "r+", libver=LIBVER)
        self._file = f
        self.committed = self.resumed_from = int(f.attrs.get(COMMITTED_ATTR, 0))
        for name in self.columns:  # drop anything past the commit point
            if f[name].shape[0] != self.committed:
                f[name].resize(self.committed, axis=0)
        f.attrs["complete"] = np.bool_(self.committed >= self.planned_rows)
        f.attrs["open_for_writing"] = np.bool_(True)
        self._start_swmr()

    def _start_swmr(self) -> None:
        """Switch the open file to SWMR writing (flushes it): from now on HDF5 writes
        metadata in dependency order (a chunk-index node before the node pointing to it),
        so a kill mid-flush never leaves committed rows behind a dangling address."""
        assert self._file is not None
        self._file.flush()
        if _swmr_capable(self._file):
            self._file.swmr_mode = True

    def _rebuild(self) -> None:
        """Copy the committed rows of a crashed file into a fresh one and put it in its place."""
        tmp = _temp_path(self.path)
        f: h5py.File | None = None
        try:
            with read(self.path, locking=False) as old:
                f = h5py.File(tmp, "w", libver=LIBVER)
                n = old.rows
                self._build(f, {})
                for k, v in old._f.attrs.items():  # created, command, model... as first written
                    f.attrs[k] = v
                for name, col in self.columns.items():
                    src, dst = old._f[name], f[name]
                    dst.resize(n, axis=0)
                    row_bytes = max(1, int(np.prod(col.shape, dtype=np.int64)) * (8 if col.dtype == "str"
                                                                                   else np.dtype(col.dtype).itemsize))
                    step = max(col.chunk_rows, (8 << 20) // row_bytes // col.chunk_rows * col.chunk_rows)
                    for a in range(0, n, step):  # bounded memory
                        b = min(n, a + step)
                        dst[a:b] = src.asstr()[a:b] if col.dtype == "str" else src[a:b]
            f.attrs[COMMITTED_ATTR] = np.int64(n)
            f.attrs["complete"] = np.bool_(n >= self.planned_rows)
            self._file, f = f, None
            self.committed = self.resumed_from = n
            self._put_in_place(tmp)
        except OSError as e:
            raise VitlensError(f"cannot resume '{self.path}': its committed rows could not be copied "
                               f"({' '.join(str(e).split())}); export again with `overwrite=True`") from None
        finally:
            if f is not None:  # an error before it became self._file
                f.close()
            tmp.unlink(missing_ok=True)

    # ----------------------------------------------------------------- append
    def append(self, rows: Mapping[str, Any]) -> int:
        """Write one batch and commit it. Returns the new committed row count.

        Args:
            rows: column name -> array of shape ``(B, *column.shape)`` (every column).
        """
        f = self._file
        if f is None:
            raise VitlensError("the export file is closed")
        missing = set(self.columns) - set(rows)
        extra = set(rows) - set(self.columns)
        if missing or extra:
            raise ValueError(f"append needs exactly the columns {sorted(self.columns)}; missing {sorted(missing)}, "
                             f"unknown {sorted(extra)}")
        sizes = {len(v) for v in rows.values()}
        if len(sizes) != 1:
            raise ValueError(f"every column of a batch needs the same number of rows, got {sorted(sizes)}")
        b = sizes.pop()
        if b == 0:
            return self.committed
        n0, n1 = self.committed, self.committed + b
        for name, col in self.columns.items():
            ds = f[name]
            ds.resize(n1, axis=0)
            value = rows[name]
            if col.dtype == "str":
                value = np.array([str(v) for v in value], dtype=object)
            else:
                value = np.asarray(value, dtype=col.dtype)
                if value.shape[1:] != col.shape:
                    raise ValueError(f"column {name}: rows of shape {col.shape} expected, got {value.shape[1:]}")
            ds[n0:n1] = value
        f.flush()                                   # data and metadata on disk ...
        if self.before_commit is not None:
            self.before_commit(n0, n1)
        f.attrs[COMMITTED_ATTR] = np.int64(n1)      # ... before the commit counter moves
        if n1 >= self.planned_rows:
            f.attrs["complete"] = np.bool_(True)
        f.flush()
        self.committed = n1
        return n1

    def set_attrs(self, **attrs: Any) -> None:
        if self._file is None:
            raise VitlensError("the export file is closed")
        for k, v in attrs.items():
            self._file.attrs[k] = _attr_value(v)
        self._file.flush()

    def close(self) -> None:
        """Close the HDF5 file (flushing it) and release the lock."""
        try:
            if self._file is not None:
                try:
                    self._file.attrs["open_for_writing"] = np.bool_(False)  # a clean close
                    self._file.close()
                finally:
                    self._file = None
        finally:
            self._lock.release()

    def __enter__(self) -> "ExportWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------------- reader
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


def _from_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "OS":
            return [x.decode() if isinstance(x, bytes) else str(x) for x in v.tolist()]
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


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


# ---------------------------------------------------------------------- torchrun
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
