"""Exports: HDF5 files (``vitlens.export.read``), overlays, figures.

Submodules are imported on first use, so ``import vitlens`` (and importing
``vitlens.export.overlay``) never loads h5py.
"""
from __future__ import annotations

from typing import Any

__all__ = ["read", "ExportFile", "SCHEMA"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import hdf5

        return getattr(hdf5, name)
    raise AttributeError(f"module 'vitlens.export' has no attribute {name!r}")
