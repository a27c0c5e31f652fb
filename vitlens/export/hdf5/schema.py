"""Schema ``vitlens/1``: the constants, the column description, the schema check, and how
Python values are stored as HDF5 attributes and read back (documented in ``docs/hdf5-schema.md``)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vitlens._util import jsonable as _jsonable
from vitlens.errors import VitlensError

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


# ------------------------------------------------------------------ attributes
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
