"""Image decoding with a strict bad-input policy.

:func:`load_image` turns any image file Pillow can decode into a fully loaded
8-bit ``"RGB"`` :class:`PIL.Image.Image` with the EXIF orientation applied. Every
way an input can be unusable (missing, a folder, empty, not an image, truncated,
too large, unreadable) raises :class:`~vitlens.errors.ImageLoadError` with a
message that says what was wrong and what to do, never a raw Pillow/OS error.

:func:`find_images` lists the image files under a folder for batch use;
:func:`resolve_inputs` turns what a user typed (folder, list file, glob, file)
into paths; :class:`ImageDataset` / :func:`image_batches` decode and preprocess
them in DataLoader workers, recording a bad file as a failed item (with the
reason) instead of stopping the batch.

This module imports only Pillow and NumPy at import time so it stays cheap to
import from the command line; torch and timm are imported when batches are made.
"""
from __future__ import annotations

import difflib
import glob
import os
import re
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitlens.errors import ImageLoadError, VitlensError

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_image", "Inputs", "resolve_inputs", "relative_name",
           "ImageDataset", "ImageBatch", "image_batches", "labels_from_folders"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
"""File extensions (lower-case, with the dot) that :func:`find_images` collects."""

# Modes that carry an alpha band; they are composited over white.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes whose "transparency" info entry Pillow turns into alpha on convert("RGBA").
_TRANSPARENCY_MODES = frozenset({"1", "L", "P", "RGB"})
# Integer modes holding 16-bit unsigned samples.
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

_BOMB_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file into a fully loaded 8-bit RGB image.

    The whole file is decoded up front (``img.load()``), so truncated or corrupt
    data is reported here rather than later. The EXIF orientation tag is applied
    with :func:`PIL.ImageOps.exif_transpose` (an unreadable EXIF block is ignored
    and the pixels are returned as stored). Multi-frame files (GIF, TIFF, ...)
    yield their first frame.

    Pixel modes are converted as follows:

    * ``"1"``, ``"L"``, ``"P"``, ``"CMYK"``, ``"YCbCr"``, ``"RGBX"``, ``"HSV"``...:
      Pillow's own conversion to ``"RGB"``.
    * Modes with alpha (``"RGBA"``, ``"LA"``, ``"PA"``, premultiplied ``"RGBa"``/
      ``"La"``) and palette/grey/RGB images with a ``transparency`` entry:
      composited over a white background.
    * 16-bit grey (``"I;16"``, ``"I;16B"``, ...): scaled by the full 16-bit range,
      so 65535 maps to 255 (no clipping at 255).
    * 32-bit integer ``"I"``: scaled by the bit depth recorded in the file (TIFF
      ``BitsPerSample`` of at most 16) when known, else by 16 bits if all values
      lie in 0..65535 (how older Pillow stores 16-bit PNGs), else min-max
      normalised.
    * Float ``"F"``: values within [0, 1] are scaled by 255, anything else is
      min-max normalised; NaN becomes 0.

    Args:
        path: Path to the image file.

    Returns:
        A new, fully loaded image in mode ``"RGB"``, independent of the file.

    Raises:
        ImageLoadError: If the path is missing, a directory, not a regular file,
            empty, unreadable (permissions), not a recognised image format,
            truncated or corrupt, larger than ``PIL.Image.MAX_IMAGE_PIXELS``, or
            stored in a pixel mode that cannot be converted to RGB.
    """
    path_str = os.fspath(path)
    _apply_pixel_limit_env()
    _check_file(path_str)

    try:
        with open(path_str, "rb") as fh:
            return _open_and_decode(fh, path_str)
    except ImageLoadError:
        raise
    except FileNotFoundError as exc:  # removed between the stat and the open
        raise ImageLoadError(path_str, _missing_reason()) from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(path_str, _DIRECTORY_REASON) from exc
    except PermissionError as exc:
        raise ImageLoadError(path_str, _PERMISSION_REASON) from exc
    except OSError as exc:
        raise ImageLoadError(
            path_str,
            f"the file could not be read ({exc}); check the disk or network share and retry",
        ) from exc


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """List the image files below a folder, recursively.

    A file counts as an image when its extension (case-insensitive) is in
    :data:`IMAGE_EXTENSIONS`; its content is not checked here (use
    :func:`load_image` for that).

    Args:
        root: Folder to search.

    Returns:
        The image file paths (joined onto ``root``), sorted.

    Raises:
        VitlensError: If ``root`` does not exist or is not a folder.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise VitlensError(
            f"cannot list images in '{root_path}': no such folder; check the path "
            f"(relative paths are resolved from {os.getcwd()})"
        )
    if not root_path.is_dir():
        raise VitlensError(
            f"cannot list images in '{root_path}': it is a file, not a folder; "
            "pass a folder, or load a single image with load_image"
        )
    return sorted(
        p for p in root_path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


# --------------------------------------------------------------------------- many inputs

LIST_SUFFIXES: tuple[str, ...] = (".txt", ".lst", ".list")
"""A file with one of these suffixes is read as a list of image paths, one per line."""

_GLOB_CHARS = re.compile(r"[*?\[]")


class Inputs(NamedTuple):
    """What :func:`resolve_inputs` found: the images, in input order, and the root they are named from."""

    root: Path          #: folder the paths are reported relative to (:func:`relative_name`)
    paths: list[Path]   #: image paths in input order (a list file's entries may not exist: they fail later)


def resolve_inputs(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Inputs:
    """Turn a command-line INPUT into an ordered list of image paths.

    ``spec`` may be

    * a folder: every image file below it, recursively (:func:`find_images`), sorted;
    * a list file (suffix in :data:`LIST_SUFFIXES`): one path per line, relative paths
      resolved from the list file's folder; blank lines and lines starting with ``#``
      are skipped; entries are kept even when missing, so a batch job records them as
      failed rows instead of silently shifting every later row;
    * a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): the matching image files, sorted;
    * a single image file;
    * a sequence of paths: taken as given, in order.

    Raises:
        VitlensError: nothing exists at ``spec``, a folder or glob holds no image, or a
            list file is empty; the message says what was looked for.
    """
    if isinstance(spec, (list, tuple)):
        paths = [Path(p) for p in spec]
        if not paths:
            raise VitlensError("no input images: the list of paths is empty")
        parents = [str(p.parent.resolve()) for p in paths]
        return Inputs(Path(os.path.commonpath(parents)), paths)
    text = os.fspath(spec)  # type: ignore[arg-type]
    path = Path(text)
    if path.is_dir():
        found = find_images(path)
        if not found:
            raise VitlensError(f"no image files below folder '{path}' (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                               f"recursively); point INPUT at the folder that holds the images")
        return Inputs(path, found)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            return Inputs(path.parent, _read_list(path))
        return Inputs(path.parent, [path])
    if _GLOB_CHARS.search(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True)
                         if Path(m).suffix.lower() in IMAGE_EXTENSIONS and Path(m).is_file())
        if not matches:
            raise VitlensError(f"the pattern '{text}' matches no image file ({', '.join(IMAGE_EXTENSIONS)}); "
                               f"quote it so the shell passes it unexpanded, and check the folder")
        fixed = []
        for part in Path(text).parts:      # the folders before the first wildcard
            if _GLOB_CHARS.search(part):
                break
            fixed.append(part)
        return Inputs(Path(*fixed) if fixed else Path("."), matches)
    raise VitlensError(f"no such file or folder: '{text}' (relative paths are resolved from {os.getcwd()}); "
                       f"INPUT is an image, a folder of images, a list file ({', '.join(LIST_SUFFIXES)}) "
                       f"or a quoted glob pattern")


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise VitlensError(f"list file '{path}' is not UTF-8 text ({exc}); a list file holds one image path "
                           f"per line") from exc
    entries = [line.strip() for line in lines]
    paths = [Path(e) if Path(e).is_absolute() else path.parent / e
             for e in entries if e and not e.startswith("#")]
    if not paths:
        raise VitlensError(f"list file '{path}' names no image (blank lines and #comments are skipped); "
                           f"write one image path per line")
    return paths


def relative_name(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``path`` relative to ``root`` with ``/`` separators (absolute when it lies outside ``root``)."""
    p, r = Path(path), Path(root)
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        try:
            return p.resolve().relative_to(r.resolve()).as_posix()
        except ValueError:
            return p.resolve().as_posix()


class ImageBatch(NamedTuple):
    """One batch from :func:`image_batches`. Failed items hold a zero image; check ``ok``."""

    index: "torch.Tensor"    #: ``[B]`` int64, position of each item in the input list
    images: "torch.Tensor"   #: ``[B, 3, H, W]`` preprocessed (zeros where not ok)
    ok: "torch.Tensor"       #: ``[B]`` bool, decoded and preprocessed
    errors: list[str]        #: ``""`` where ok, else why the item failed
    paths: list[Path]
    #: ``[B, 2]`` int64, (width, height) of each decoded file before preprocessing (0, 0 where not ok)
    sizes: "torch.Tensor | None" = None

    def smaller_than_input(self, data_config: dict[str, Any]) -> list[int]:
        """Positions in this batch of decoded images smaller than the model's input in width or
        height: preprocessing upsamples them, so the model sees an enlarged, blurred picture."""
        if self.sizes is None:
            return []
        h, w = (int(v) for v in data_config["input_size"][-2:])
        small = self.ok.bool() & ((self.sizes[:, 0] < w) | (self.sizes[:, 1] < h))
        return small.nonzero().flatten().tolist()


class ImageDataset:
    """Map-style dataset: decode + preprocess one image per item; a bad file becomes a failed item.

    Item ``i`` is ``(i, image [3, H, W], ok, error)``. Decoding errors (see
    :func:`load_image`) and preprocessing errors are caught and returned as the reason,
    never raised, so one bad file cannot stop a DataLoader.

    Args:
        paths: image paths in input order.
        data_config: the model's timm data config (``load_model(...).data_config``).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], data_config: dict[str, Any]) -> None:
        from ..models import make_transform

        self.paths = [Path(p) for p in paths]
        self.data_config = data_config
        self.transform = make_transform(data_config)
        self.input_size = tuple(int(v) for v in data_config["input_size"])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, "torch.Tensor", bool, str, tuple[int, int]]:
        """``(i, image [3, H, W], ok, error, (width, height) of the decoded file)``."""
        import torch

        try:
            img = load_image(self.paths[i])
            return i, self.transform(img), True, "", img.size
        except ImageLoadError as exc:
            error = exc.reason
        except Exception as exc:  # noqa: BLE001 - a batch job records any per-item failure
            error = f"preprocessing failed: {' '.join(str(exc).split()) or type(exc).__name__}"
        return i, torch.zeros(self.input_size), False, error, (0, 0)


def _collate(items: list[tuple[int, "torch.Tensor", bool, str, tuple[int, int]]], paths: list[Path]) -> ImageBatch:
    import torch

    index = torch.tensor([it[0] for it in items], dtype=torch.long)
    return ImageBatch(index, torch.stack([it[1] for it in items]), torch.tensor([it[2] for it in items]),
                      [it[3] for it in items], [paths[i] for i in index.tolist()],
                      torch.tensor([it[4] for it in items], dtype=torch.long).reshape(-1, 2))


class _Collate:  # picklable for spawn-started workers
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __call__(self, items: list) -> ImageBatch:
        return _collate(items, self.paths)


def image_batches(paths: Sequence[str | os.PathLike[str]], data_config: dict[str, Any], batch_size: int = 32,
                  workers: int = 0, pin_memory: bool = False, start: int = 0,
                  stop: int | None = None) -> Iterator[ImageBatch]:
    """Decode and preprocess ``paths[start:stop]`` in order, in batches, with DataLoader workers.

    Args:
        paths: image paths in input order.
        data_config: the model's timm data config.
        batch_size: images per batch (the last may be smaller).
        workers: DataLoader worker processes (0 decodes in this process).
        pin_memory: page-locked batches for fast, non-blocking copies to a GPU.
        start, stop: the slice of ``paths`` to read (``index`` stays the position in ``paths``),
            e.g. to resume after the rows already written.

    Yields:
        :class:`ImageBatch` in input order; failed items have ``ok=False`` and a reason.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    dataset = ImageDataset(paths, data_config)
    stop = len(dataset) if stop is None else min(stop, len(dataset))
    subset = Subset(dataset, range(start, stop))  # type: ignore[arg-type]
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=pin_memory and torch.cuda.is_available(),
                        collate_fn=_Collate(dataset.paths), persistent_workers=False)
    yield from loader


def labels_from_folders(paths: Sequence[str | os.PathLike[str]], class_names: Sequence[str] | None) -> "torch.Tensor":
    """Class index of each image from its parent folder's name (``.../cat/001.jpg`` -> ``"cat"``).

    A folder name matches a class name case-insensitively (spaces, ``_`` and ``-`` are
    treated alike); a folder named by an integer in range is taken as the class index.

    Raises:
        VitlensError: a folder name is no class of the model; the message lists the
            unknown names with close matches and how many classes the model has.
    """
    import torch

    def norm(name: str) -> str:
        return re.sub(r"[\s_\-]+", " ", name.strip().lower())

    names = list(class_names or [])
    lookup = {norm(n): i for i, n in enumerate(names)}
    labels, unknown = [], []
    for p in paths:
        folder = Path(p).parent.name
        if norm(folder) in lookup:
            labels.append(lookup[norm(folder)])
        elif folder.isdigit() and (not names or int(folder) < len(names)):
            labels.append(int(folder))
        else:
            unknown.append(folder)
            labels.append(-1)
    if unknown:
        shown = sorted(set(unknown))[:5]
        hints = []
        for u in shown:
            close = difflib.get_close_matches(norm(u), list(lookup), n=1)
            hints.append(f"'{u}'" + (f" (did you mean '{names[lookup[close[0]]]}'?)" if close else ""))
        known = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise VitlensError(f"{len(unknown)} image(s) sit in folders that are not classes of the model: "
                           f"{', '.join(hints)}; the model's classes are: {known or 'unnamed'} "
                           f"(folders may also be class indices 0..{max(len(names), 1) - 1})")
    return torch.tensor(labels, dtype=torch.long)


# --------------------------------------------------------------------------- checks

_DIRECTORY_REASON = (
    "is a directory, not an image file; pass the image files inside it (e.g. folder/*.jpg)"
)
_PERMISSION_REASON = (
    "permission denied; make the file readable (e.g. `chmod u+r`) or run as a user who can read it"
)


def _missing_reason() -> str:
    return (
        "no such file; check the path for typos "
        f"(relative paths are resolved from {os.getcwd()})"
    )


def _check_file(path: str) -> None:
    """Reject paths that are not a non-empty regular file before decoding."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageLoadError(path, _missing_reason()) from exc
    except PermissionError as exc:
        raise ImageLoadError(path, _PERMISSION_REASON) from exc
    except (OSError, ValueError) as exc:  # e.g. name too long, embedded NUL byte
        raise ImageLoadError(path, f"the path cannot be used ({exc}); check the file name") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(path, _DIRECTORY_REASON)
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(
            path, "is not a regular file (e.g. a pipe or device); pass an image file"
        )
    if st.st_size == 0:
        raise ImageLoadError(
            path,
            "file is empty (0 bytes); it was probably cut off while downloading or "
            "copying, so fetch or export it again",
        )


#: Environment variable setting the decompression-bomb limit in pixels for every
#: :func:`load_image` call ("none" disables the check), also inside DataLoader workers;
#: the command line's ``--max-image-pixels N`` sets it.
MAX_PIXELS_ENV = "VITLENS_MAX_IMAGE_PIXELS"


def _apply_pixel_limit_env() -> None:
    """Set ``PIL.Image.MAX_IMAGE_PIXELS`` from :data:`MAX_PIXELS_ENV` when it is set."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return
    if value.lower() == "none":
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise VitlensError(f"{MAX_PIXELS_ENV}={value!r}: give a positive number of pixels, or 'none' to "
                           f"disable the decompression-bomb check")
    Image.MAX_IMAGE_PIXELS = limit


def _bomb_reason(pixels: int | None) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    count = f"image has {pixels} pixels" if pixels is not None else "image is too large"
    return (
        f"{count}, more than the decompression-bomb limit of {limit} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); if you trust this file, raise the limit: `max_image_pixels=N` "
        f"(or the environment variable {MAX_PIXELS_ENV}=N; 'none' disables the check), or in Python "
        "`PIL.Image.MAX_IMAGE_PIXELS = N`; or downscale the image"
    )


def _check_pixels(size: tuple[int, int]) -> None:
    """Treat anything above ``MAX_IMAGE_PIXELS`` (Pillow only warns up to 2x) as an error."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = max(1, size[0]) * max(1, size[1])
    if pixels > limit:
        raise _BombDetected(pixels)


class _BombDetected(Exception):
    def __init__(self, pixels: int | None):
        super().__init__(pixels)
        self.pixels = pixels


def _open_and_decode(fh: object, path: str) -> Image.Image:
    """Identify, size-check and fully decode the first frame of an open file."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; _check_pixels
            # turns that range into an error, so the warning itself is redundant.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as img:  # type: ignore[arg-type]
                _check_pixels(img.size)
                img.load()  # full decode: surfaces truncated / corrupt data now
                # Convert while the file is open: TIFF orientation and bit depth
                # live in tag_v2, which a detached copy would not carry.
                return _finish(img, path)
    except ImageLoadError:
        raise
    except _BombDetected as exc:
        raise ImageLoadError(path, _bomb_reason(exc.pixels)) from None
    except Image.DecompressionBombError as exc:
        match = _BOMB_PIXELS_RE.search(str(exc))
        raise ImageLoadError(path, _bomb_reason(int(match.group(1)) if match else None)) from exc
    except UnidentifiedImageError as exc:
        signature = _sniff_signature(fh)
        if signature is not None:  # a real image whose header is already damaged
            raise ImageLoadError(
                path,
                f"starts like a {signature} file but is truncated or corrupt ({exc}); "
                "re-download or re-export the file",
            ) from exc
        raise ImageLoadError(
            path,
            "not a recognised image format; check that the file really is an image "
            "(not e.g. a text or HTML page saved with an image extension) and re-save it "
            f"as one of {', '.join(IMAGE_EXTENSIONS)}",
        ) from exc
    except PermissionError as exc:
        raise ImageLoadError(path, _PERMISSION_REASON) from exc
    except MemoryError:
        raise
    except Exception as exc:  # OSError, SyntaxError, ValueError, EOFError, struct/zlib errors...
        raise ImageLoadError(
            path,
            f"image data is truncated or corrupt ({exc}); re-download or re-export the file",
        ) from exc


_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _sniff_signature(fh: object) -> str | None:
    """Name the image format whose magic bytes start the file, if any."""
    try:
        fh.seek(0)  # type: ignore[attr-defined]
        head = fh.read(16)  # type: ignore[attr-defined]
    except Exception:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    return None


# ----------------------------------------------------------------------- conversion


def _finish(img: Image.Image, path: str) -> Image.Image:
    """Apply the EXIF orientation and convert to a new, file-independent RGB image."""
    try:
        bits = _declared_bits(img)  # read before transposing drops the TIFF tags
        rgb = _to_rgb(_apply_exif_orientation(img), bits)
    except MemoryError:
        raise
    except Exception as exc:  # exotic modes: never leak a raw Pillow error
        raise ImageLoadError(
            path,
            f"pixel mode {img.mode!r} could not be converted to RGB ({exc}); "
            "re-save the image as an 8-bit RGB or greyscale PNG/JPEG",
        ) from exc
    # exif_transpose/convert already return new images; copy the rare pass-through.
    return rgb.copy() if rgb is img else rgb


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception:  # unreadable EXIF only loses the orientation, not the pixels
        return img
    return transposed if transposed is not None else img


def _to_rgb(img: Image.Image, bits: int | None = None) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _ALPHA_MODES or ("transparency" in img.info and mode in _TRANSPARENCY_MODES):
        return _composite_on_white(img.convert("RGBA"))
    if mode in _UINT16_MODES:
        return _grey_array_to_rgb(_int_to_uint8(np.asarray(img), bits or 16))
    if mode == "I":
        return _grey_array_to_rgb(_int_to_uint8(np.asarray(img), bits))
    if mode == "F":
        return _grey_array_to_rgb(_float_to_uint8(np.asarray(img)))
    return img.convert("RGB")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_array_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8), mode="L").convert("RGB")


def _scale_by_bits(values: np.ndarray, bits: int) -> np.ndarray:
    top = float(2**bits - 1)
    scaled = np.rint(values.astype(np.float64) * (255.0 / top))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _declared_bits(img: Image.Image) -> int | None:
    """Bits per sample recorded in the file, when the format says (TIFF)."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    try:
        bits = tags.get(258)  # BitsPerSample
        if isinstance(bits, tuple):
            bits = bits[0]
        bits = int(bits)
    except Exception:
        return None
    # Only small depths are informative: a 32-bit integer TIFF says nothing about
    # the range its values actually use.
    return bits if 1 <= bits <= 16 else None


def _int_to_uint8(values: np.ndarray, bits: int | None) -> np.ndarray:
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if bits is not None and lo >= 0 and hi <= 2**bits - 1:
        return _scale_by_bits(values, bits)
    if lo >= 0 and hi <= 65535:
        return _scale_by_bits(values, 16)
    return _min_max_to_uint8(values.astype(np.float64))


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return _min_max_to_uint8(values)


def _min_max_to_uint8(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
