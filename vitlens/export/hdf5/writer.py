"""Writing: :class:`ExportWriter` appends and commits batches under an exclusive
:class:`OutputLock` on ``OUTPUT.lock`` (the crash-safety protocol is in the package docstring)."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np

from vitlens._util import jsonable as _jsonable
from vitlens.errors import VitlensError
from vitlens.export.hdf5.reader import _open_read, _swmr_capable, read
from vitlens.export.hdf5.schema import COMMITTED_ATTR, LIBVER, SCHEMA, Column, _attr_value, check_schema


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
