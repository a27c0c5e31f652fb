"""Texture–shape cue-conflict stimuli (Geirhos et al. 2019) as a dataset: the folder layout,
the labels in the file names, and the images, decoded a batch at a time.

Layout: ``<shape category>/<shape><i>-<texture><j>.png``. The folder name is the shape
label; the texture label is the part of the file name after the last ``_``, without its
extension, then after the last ``-``, with digits removed (step 4 of
``shared/data/cue-conflict/SOURCE.md``). :func:`vitlens.shape_bias` runs the protocol on
these stimuli; this module only reads them.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from ..errors import ImageLoadError, VitlensError
from . import IMAGE_EXTENSIONS, load_image

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["CUE_CONFLICT_CATEGORIES", "Stimulus", "SkippedFile", "StimulusScan", "texture_label",
           "scan_stimuli", "stimulus_batches"]

#: The 16 categories of the cue-conflict stimuli, sorted (the order model-vs-human uses).
CUE_CONFLICT_CATEGORIES: tuple[str, ...] = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock",
    "dog", "elephant", "keyboard", "knife", "oven", "truck",
)


@dataclass(frozen=True)
class SkippedFile:
    """A file or folder inside the stimuli folder that was not evaluated, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Stimulus:
    """One cue-conflict image: its path relative to the stimuli folder (``/``-separated),
    its path on disk, and its shape and texture labels."""

    rel: str
    path: Path
    shape: str
    texture: str


class StimulusScan(NamedTuple):
    """What :func:`scan_stimuli` found."""

    stimuli: list[Stimulus]      #: every stimulus, sorted by folder then file name
    skipped: list[SkippedFile]   #: files and folders not evaluated, with reasons
    folders: set[str]            #: the category folders present


def texture_label(file_name: str) -> str | None:
    """The texture label in a cue-conflict file name (SOURCE.md step 4), or None.

    The part after the last ``_``, without its extension, then the part after the last
    ``-``, with digits removed: ``"cat7-elephant1.png"`` -> ``"elephant"``. None when the
    name has no ``-`` there (e.g. ``"cat1.png"``) or nothing is left.
    """
    part = os.path.splitext(file_name.rsplit("_", 1)[-1])[0]
    if "-" not in part:
        return None
    tex = re.sub(r"\d", "", part.rsplit("-", 1)[-1])
    return tex or None


def _not_a_category(name: str, known: Iterable[str], mapping_name: str) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"is not a category of mapping '{mapping_name}' nor one of the 16 cue-conflict categories"
            f"{hint}; known categories: {', '.join(sorted(known))}")


def scan_stimuli(root: str | os.PathLike[str], known: set[str], mapping_name: str) -> StimulusScan:
    """Validate the folder layout and list the stimuli; raise on anything ambiguous.

    Args:
        root: the stimuli folder.
        known: the category names a folder or texture label may have.
        mapping_name: the category mapping's name, for the messages.

    Raises:
        VitlensError: a missing folder, a folder or texture label that is not a known
            category, a stimulus name without texture label, an image outside the
            category folders, or no stimuli at all.
    """
    root = Path(root)
    if not root.exists():
        raise VitlensError(f"stimuli folder '{root}' does not exist; check the path "
                           f"(relative paths are resolved from {os.getcwd()})")
    if not root.is_dir():
        raise VitlensError(f"stimuli folder '{root}' is a file, not a folder; pass the folder holding "
                           f"the <category>/ subfolders")
    stimuli: list[Stimulus] = []
    skipped: list[SkippedFile] = []
    folders: set[str] = set()
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith("."):
            skipped.append(SkippedFile(name, "hidden file or folder"))
            continue
        if entry.is_dir():
            if name not in known:
                raise VitlensError(f"stimuli folder '{entry}': '{name}' "
                                   f"{_not_a_category(name, known, mapping_name)}; rename or remove that folder")
            folders.add(name)
            for f in sorted(entry.iterdir(), key=lambda p: p.name):
                rel = f"{name}/{f.name}"
                if f.name.startswith("."):
                    skipped.append(SkippedFile(rel, "hidden file or folder"))
                elif f.is_dir():
                    skipped.append(SkippedFile(rel, "folder inside a category folder (not searched)"))
                elif f.suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append(SkippedFile(rel, f"not an image file (extension not one of "
                                                    f"{', '.join(IMAGE_EXTENSIONS)})"))
                else:
                    tex = texture_label(f.name)
                    if tex is None:
                        raise VitlensError(
                            f"stimulus '{f}' has no texture label in its name: cue-conflict file names "
                            f"are <shape><i>-<texture><j>.png (e.g. cat7-elephant1.png); rename it or "
                            f"move it out of the folder")
                    if tex not in known:
                        raise VitlensError(f"stimulus '{f}': texture label '{tex}' "
                                           f"{_not_a_category(tex, known, mapping_name)}")
                    stimuli.append(Stimulus(rel, f, name, tex))
        elif entry.suffix.lower() in IMAGE_EXTENSIONS:
            raise VitlensError(f"image '{entry}' is not inside a category folder, so it has no shape label; "
                               f"put stimuli in <shape category>/ subfolders (e.g. cat/cat7-elephant1.png)")
        else:
            skipped.append(SkippedFile(name, "not an image file (outside the category folders)"))
    if not stimuli:
        raise VitlensError(f"no stimuli found in '{root}': expected <category>/<shape><i>-<texture><j>.png "
                           f"images (e.g. cat/cat7-elephant1.png) in folders named after the categories")
    return StimulusScan(stimuli, skipped, folders)


def unreadable(stimulus: Stimulus) -> SkippedFile | None:
    """Decode ``stimulus`` only to check it: the reason it cannot be read, or None."""
    try:
        load_image(stimulus.path)
    except ImageLoadError as e:
        return SkippedFile(stimulus.rel, e.reason)
    return None


def stimulus_batches(stimuli: Sequence[Stimulus], transform: Callable[[Any], "torch.Tensor"], batch_size: int,
                     skipped: list[SkippedFile]) -> Iterator[tuple[list[Stimulus], "torch.Tensor"]]:
    """Decode and transform the stimuli ``batch_size`` at a time, in order.

    Yields ``(stimuli of the batch, [b, 3, H, W] tensor)`` for the readable ones; an
    unreadable file is appended to ``skipped`` with its reason, and a batch with no
    readable file is not yielded.
    """
    import torch

    for start in range(0, len(stimuli), batch_size):
        batch, tensors = [], []
        for s in stimuli[start:start + batch_size]:
            try:
                img = load_image(s.path)
            except ImageLoadError as e:
                skipped.append(SkippedFile(s.rel, e.reason))
                continue
            batch.append(s)
            tensors.append(transform(img))
        if batch:
            yield batch, torch.stack(tensors)
