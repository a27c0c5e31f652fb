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

The package is split by responsibility: :mod:`.schema` (constants, columns, the schema
check, attribute encoding), :mod:`.writer` (the writer and its lock), :mod:`.reader`
(lazy reading) and :mod:`.merge` (shard merge and crash repair). It imports h5py and
never runs a model.
"""
from __future__ import annotations

from vitlens.export.hdf5.merge import merge_shards, repair
from vitlens.export.hdf5.reader import ExportFile, Rows, read
from vitlens.export.hdf5.schema import (CHUNK_BYTES, COMMITTED_ATTR, LIBVER, SCHEMA, SCHEMA_MAJOR, STR_DTYPE, Column,
                                        SchemaError, check_schema, chunk_rows_for, shard_path)
from vitlens.export.hdf5.writer import ExportWriter, OutputLock

__all__ = ["SCHEMA", "SCHEMA_MAJOR", "Column", "ExportWriter", "ExportFile", "Rows", "read", "merge_shards", "repair",
           "check_schema", "chunk_rows_for", "OutputLock", "shard_path", "COMMITTED_ATTR", "CHUNK_BYTES",
           "LIBVER", "STR_DTYPE", "SchemaError"]
