"""CIFAR-10 as JPEG files in class folders, the layout of the CIFAR-10-images repository
(``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg``), read from the folder or from a
``.tar.gz`` of it. Where to get it and what to cite: ``docs/datasets.md``.

The notebooks and benchmarks use a handful of test images per class; nothing here is needed
to run vitlens itself.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from PIL import Image

__all__ = ["CLASSES", "ENV", "cifar10_images", "cifar10_source"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Environment variable naming the CIFAR-10 folder or archive when no ``source`` is given.
ENV = "VITLENS_CIFAR10"


def cifar10_source(source: str | os.PathLike[str] | None = None) -> Path | None:
    """The CIFAR-10 folder or ``.tar.gz`` to read: ``source``, else ``$VITLENS_CIFAR10``, else None.

    Raises:
        FileNotFoundError: the path given (or named by the variable) does not exist.
    """
    value = source if source is not None else (os.environ.get(ENV) or None)
    if value is None:
        return None
    p = Path(value)
    if not p.exists():
        how = "source" if source is not None else f"${ENV}"
        raise FileNotFoundError(f"{how} '{p}' does not exist; give the CIFAR-10-images folder (train/ and test/ "
                                f"class folders) or a .tar.gz of it (where to get it: docs/datasets.md)")
    return p


def _members(root: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    """(class, file name, bytes) of ``split`` in the source's own order (sorted for a folder)."""
    if root.is_dir():
        for f in sorted((root / split).glob("*/*.jpg")):
            yield f.parent.name, f.name, f.read_bytes()
        return
    with tarfile.open(root) as tar:
        for m in tar:
            parts = PurePosixPath(m.name).parts
            parts = parts[parts.index(split):] if split in parts else ()
            if m.isfile() and len(parts) == 3 and parts[2].endswith(".jpg"):
                f = tar.extractfile(m)
                if f is not None:
                    yield parts[1], parts[2], f.read()


def cifar10_images(source: str | os.PathLike[str] | None = None, *, split: str = "test",
                   per_class: int | None = None, names: Sequence[str] | None = None,
                   decode: bool = True) -> list[tuple[str, str, Image.Image | bytes]]:
    """Read CIFAR-10 images: ``[(class, file name, image), ...]``, grouped by class in
    :data:`CLASSES` order.

    Args:
        source: the CIFAR-10-images folder or a ``.tar.gz`` of it; None: ``$VITLENS_CIFAR10``
            (an empty list when that is not set either, so callers can fall back to other images).
        split: ``"test"`` or ``"train"``.
        per_class: at most this many per class (the first in file-name order for a folder,
            archive order for a ``.tar.gz``); None: all.
        names: only these file names (e.g. ``["0003.jpg"]``: one image per class).
        decode: False returns the JPEG bytes instead of an RGB image (to copy files).
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be at least 1 (or None for all), got {per_class}")
    root = cifar10_source(source)
    if root is None:
        return []
    wanted = None if names is None else set(names)
    limit = per_class if per_class is not None else (len(wanted) if wanted is not None else None)
    found: dict[str, list[tuple[str, str, Image.Image | bytes]]] = {c: [] for c in CLASSES}
    for cls, name, data in _members(root, split):
        if cls not in found or (wanted is not None and name not in wanted):
            continue
        if limit is not None and len(found[cls]) >= limit:
            if all(len(v) >= limit for v in found.values()):
                break
            continue
        found[cls].append((cls, name, Image.open(io.BytesIO(data)).convert("RGB") if decode else data))
    out = [item for c in CLASSES for item in found[c]]
    if not out:
        raise ValueError(f"no CIFAR-10 {split} images in '{root}'; expected {split}/<class>/NNNN.jpg "
                         f"(the CIFAR-10-images layout, docs/datasets.md)")
    return out
