"""Tests for vitlens.data: image decoding and its bad-input policy.

Every bad input is generated on the fly in tmp_path; nothing touches the network.
"""
from __future__ import annotations

import ast
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitlens import data
from vitlens.data import IMAGE_EXTENSIONS, find_images, load_image
from vitlens.errors import ImageLoadError, VitlensError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHELSEA = REPO_ROOT / "examples" / "chelsea.jpg"


def _noise_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _load_error(path: Path | str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert str(path) in str(err)
    assert err.path == str(path)
    assert isinstance(err, ValueError) and not isinstance(err, OSError)
    return err


# --------------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    err = _load_error(path)
    assert "no such file" in err.reason
    assert "check the path" in err.reason


def test_missing_parent_is_reported_as_missing(tmp_path: Path) -> None:
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    err = _load_error(afile / "child.png")  # NotADirectoryError underneath
    assert "no such file" in err.reason


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    err = _load_error(folder)
    assert "is a directory, not an image file" in err.reason
    assert "pass the image files inside it" in err.reason


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    err = _load_error(path)
    assert "file is empty (0 bytes)" in err.reason


def test_text_file_with_image_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG, it is a shopping list\n")
    err = _load_error(path)
    assert "not a recognised image format" in err.reason
    assert ".png" in err.reason  # says what would work


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_image(tmp_path: Path, fmt: str, suffix: str, keep: float) -> None:
    buf = io.BytesIO()
    _noise_rgb().save(buf, format=fmt)
    payload = buf.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(payload[: int(len(payload) * keep)])
    err = _load_error(path)
    assert "truncated or corrupt" in err.reason
    assert "re-download" in err.reason


def test_corrupt_png_data(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _noise_rgb().save(buf, format="PNG")
    payload = bytearray(buf.getvalue())
    mid = len(payload) // 2
    payload[mid : mid + 32] = b"\x00" * 32
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(payload))
    err = _load_error(path)
    assert "truncated or corrupt" in err.reason


def test_header_only_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _noise_rgb().save(buf, format="PNG")
    path = tmp_path / "header.png"
    path.write_bytes(buf.getvalue()[:40])  # signature + IHDR, no pixel data
    err = _load_error(path)
    assert "PNG" in err.reason
    assert "truncated or corrupt" in err.reason
    assert "not a recognised image format" not in err.reason


@pytest.mark.parametrize("head", [b"\xff\xd8\xff\xe0", b"GIF89a", b"BM"])
def test_damaged_header_is_called_corrupt(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "broken.img"
    path.write_bytes(head)
    err = _load_error(path)
    assert "truncated or corrupt" in err.reason


def test_load_truncated_images_flag_untouched(tmp_path: Path) -> None:
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    load_image(_save(tmp_path / "ok.png", _noise_rgb()))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is before


def _save(path: Path, img: Image.Image, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "limit,range_name",
    [(6000, "warning"), (1000, "error")],  # 10000 px: within (1x, 2x] of 6000; > 2x of 1000
)
def test_decompression_bomb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, range_name: str
) -> None:
    path = _save(tmp_path / "big.png", Image.new("RGB", (100, 100), (10, 20, 30)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings():
        # A DecompressionBombWarning escaping load_image would fail the test.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        err = _load_error(path)
    assert list(warnings.filters) == filters_before
    assert "10000 pixels" in err.reason
    assert str(limit) in err.reason
    assert "PIL.Image.MAX_IMAGE_PIXELS" in err.reason
    assert "decompression-bomb" in err.reason


def test_at_pixel_limit_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "edge.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10000)
    assert load_image(path).size == (100, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(path).size == (100, 100)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_permission_denied_real(tmp_path: Path) -> None:
    path = _save(tmp_path / "locked.png", _noise_rgb())
    path.chmod(0)
    try:
        err = _load_error(path)
    finally:
        path.chmod(0o644)
    assert "permission denied" in err.reason


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "locked.png", _noise_rgb())

    def deny(file: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(file))

    # Shadow the builtin inside vitlens.data only (works even when running as root).
    monkeypatch.setattr(data, "open", deny, raising=False)
    err = _load_error(path)
    assert "permission denied" in err.reason
    assert "chmod" in err.reason


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    err = _load_error(path)
    assert "not a regular file" in err.reason


# ----------------------------------------------------------------- mode handling


def _rgb_array(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def test_greyscale_l_and_1(tmp_path: Path) -> None:
    grey = np.array([[0, 100, 255]], dtype=np.uint8)
    out = _rgb_array(load_image(_save(tmp_path / "g.png", Image.fromarray(grey, mode="L"))))
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()

    bilevel = Image.new("1", (4, 2), 0)
    bilevel.putpixel((1, 0), 1)
    out = _rgb_array(load_image(_save(tmp_path / "b.png", bilevel)))
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_la_transparent_becomes_white(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 1), (0, 255))
    la.putpixel((1, 0), (0, 0))  # black but fully transparent
    out = _rgb_array(load_image(_save(tmp_path / "la.png", la)))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))  # opaque red stays red
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # transparent black -> white, not black
    rgba.putpixel((2, 0), (0, 0, 255, 128))  # half-transparent blue -> light blue
    out = _rgb_array(load_image(_save(tmp_path / "rgba.png", rgba)))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    r, g, b = out[0, 2].tolist()
    assert 120 <= r <= 135 and 120 <= g <= 135 and b == 255


def test_palette(tmp_path: Path) -> None:
    src = Image.new("RGB", (4, 4), (200, 30, 40))
    src.paste((10, 220, 90), (0, 0, 2, 2))
    pal = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    path = _save(tmp_path / "pal.png", pal)
    assert Image.open(path).mode == "P"
    out = _rgb_array(load_image(path))
    assert out[0, 0].tolist() == [10, 220, 90]
    assert out[3, 3].tolist() == [200, 30, 40]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency(tmp_path: Path, suffix: str) -> None:
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    pal.putpixel((1, 0), 1)  # red, opaque
    pal.info["transparency"] = 0  # index 0 (black) is transparent
    path = _save(tmp_path / f"paltr{suffix}", pal, transparency=0)
    reopened = Image.open(path)
    assert reopened.mode == "P" and "transparency" in reopened.info
    out = _rgb_array(load_image(path))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]


def test_sixteen_bit_png_uses_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    img = Image.fromarray(values)  # uint16 -> mode "I;16"
    assert img.mode == "I;16"
    path = _save(tmp_path / "deep.png", img)
    assert Image.open(path).mode.startswith("I")
    out = _rgb_array(load_image(path))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert abs(int(out[0, 1, 0]) - 128) <= 1
    assert out[0, 2].tolist() == [255, 255, 255]
    assert out[0, 3, 0] == 1  # 257 / 65535 * 255 == 1, not clipped to 255


def test_sixteen_bit_big_endian_tiff(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    path = _save(tmp_path / "deep.tif", img)
    out = _rgb_array(load_image(path))
    assert out[0, :, 0].tolist()[0] == 0
    assert abs(int(out[0, 1, 0]) - 128) <= 1
    assert out[0, 2, 0] == 255


def test_int32_mode_i(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.int32)
    img = Image.fromarray(values, mode="I")
    out = _rgb_array(load_image(_save(tmp_path / "int.tif", img)))
    assert out[0, 0, 0] == 0 and out[0, 2, 0] == 255
    assert abs(int(out[0, 1, 0]) - 128) <= 1


def test_float_mode_f(tmp_path: Path) -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    out = _rgb_array(load_image(_save(tmp_path / "unit.tif", unit)))
    assert out[0, :, 0].tolist() == [0, 128, 255]

    wide = Image.fromarray(np.array([[-10.0, 0.0, 10.0, np.nan]], dtype=np.float32), mode="F")
    out = _rgb_array(load_image(_save(tmp_path / "wide.tif", wide)))
    assert out[0, 0, 0] == 0 and out[0, 2, 0] == 255
    assert abs(int(out[0, 1, 0]) - 128) <= 1


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    path = _save(tmp_path / "cmyk.jpg", cmyk, quality=95)
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (16, 8)
    r, g, b = _rgb_array(img)[4, 8].tolist()
    assert r > 240 and g < 15 and b < 15


def test_rgbx_and_ycbcr_convert(tmp_path: Path) -> None:
    ycc = Image.new("RGB", (8, 8), (0, 128, 255)).convert("YCbCr")
    path = _save(tmp_path / "ycc.jpg", ycc, quality=100)
    r, g, b = _rgb_array(load_image(path))[4, 4].tolist()
    assert r < 10 and abs(g - 128) < 10 and b > 245
    rgbx = Image.new("RGBX", (2, 2), (1, 2, 3, 0))
    assert data._to_rgb(rgbx).getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    "orientation,red_corner",
    [
        (1, (0, 0)),  # stored as displayed
        (6, (-1, 0)),  # rotate 90 deg clockwise: top-left -> top-right
        (8, (0, -1)),  # rotate 90 deg counter-clockwise: top-left -> bottom-left
        (3, (-1, -1)),  # rotate 180 deg: top-left -> bottom-right
    ],
)
def test_exif_orientation(
    tmp_path: Path, orientation: int, red_corner: tuple[int, int]
) -> None:
    width, height = 60, 30
    img = Image.new("RGB", (width, height), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red marker, stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / f"o{orientation}.jpg", img, exif=exif.tobytes(), quality=95)

    out = load_image(path)
    swapped = orientation in (5, 6, 7, 8)
    assert out.size == ((height, width) if swapped else (width, height))
    w, h = out.size
    corners = {(0, 0): (2, 2), (-1, 0): (w - 3, 2), (0, -1): (2, h - 3), (-1, -1): (w - 3, h - 3)}
    for corner, xy in corners.items():
        r, g, b = out.getpixel(xy)
        if corner == red_corner:
            assert r > 200 and b < 60, (corner, (r, g, b))
        else:
            assert b > 200 and r < 60, (corner, (r, g, b))


def test_multiframe_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(path), "n_frames", 1) == 3
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    r, g, b = out.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_multipage_tiff_first_page(tmp_path: Path) -> None:
    pages = [Image.new("L", (5, 3), 40), Image.new("L", (5, 3), 200)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert load_image(path).getpixel((0, 0)) == (40, 40, 40)


def test_real_photo() -> None:
    assert CHELSEA.is_file(), CHELSEA
    img = load_image(CHELSEA)
    assert img.mode == "RGB"
    assert img.size == (451, 300)
    assert load_image(str(CHELSEA)).size == (451, 300)


def test_result_is_independent_of_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "plain.png", _noise_rgb(seed=3))
    expected = np.asarray(_noise_rgb(seed=3))
    img = load_image(path)
    path.unlink()  # a lazily loaded image would fail now
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_module_level_imports_stay_light() -> None:
    tree = ast.parse(Path(data.__file__).read_text(encoding="utf-8"))
    heavy = {"torch", "matplotlib", "cv2", "h5py", "click"}
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not (top & heavy), top & heavy


# -------------------------------------------------------------------- find_images


def test_image_extensions_constant() -> None:
    assert set(IMAGE_EXTENSIONS) == {
        ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
    }
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_find_images_tree(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "folder.png").mkdir()  # a directory with an image-like name
    wanted = [
        tmp_path / "b.PNG",
        tmp_path / "a.jpg",
        tmp_path / "sub" / "c.JpEg",
        tmp_path / "sub" / "deeper" / "d.tiff",
        tmp_path / "sub" / "e.webp",
    ]
    for p in wanted:
        p.write_bytes(b"x")
    for p in [tmp_path / "readme.txt", tmp_path / "sub" / "model.pt", tmp_path / "noext"]:
        p.write_bytes(b"x")

    found = find_images(tmp_path)
    assert found == sorted(wanted)
    assert all(isinstance(p, Path) for p in found)
    assert find_images(str(tmp_path / "sub")) == sorted(wanted[2:])


def test_find_images_empty_folder(tmp_path: Path) -> None:
    assert find_images(tmp_path) == []


def test_find_images_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(VitlensError, match="no such folder") as info:
        find_images(missing)
    assert isinstance(info.value, ValueError)
    assert str(missing) in str(info.value)


def test_find_images_file_root(tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    path.write_bytes(b"x")
    with pytest.raises(VitlensError, match="not a folder"):
        find_images(path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# --------------------------------------------------------------------------- many inputs

def _tree(tmp_path: Path) -> Path:
    """root/{cat,dog}/*.png, one corrupt file in dog, and a non-image file."""
    root = tmp_path / "root"
    for folder, n in (("cat", 2), ("dog", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40 + i, 30), (i * 50, 100, 200)).save(root / folder / f"{i}.png")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "notes.txt").write_text("ignore me")
    return root


def test_resolve_inputs_folder_glob_list_file_and_sequence(tmp_path: Path) -> None:
    from vitlens.data import resolve_inputs

    root = _tree(tmp_path)
    folder = resolve_inputs(root)
    assert folder.root == root
    assert [p.relative_to(root).as_posix() for p in folder.paths] == [
        "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/broken.jpg"]
    pattern = resolve_inputs(str(root / "**" / "*.png"))
    assert pattern.root == root and [p.name for p in pattern.paths] == ["0.png", "1.png", "0.png", "1.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nroot/dog/1.png\n\nroot/cat/0.png\nroot/missing.png\n")
    listed = resolve_inputs(listing)
    assert listed.root == tmp_path
    assert listed.paths == [tmp_path / "root/dog/1.png", tmp_path / "root/cat/0.png", tmp_path / "root/missing.png"]
    single = resolve_inputs(root / "cat" / "1.png")
    assert single == (root / "cat", [root / "cat" / "1.png"])
    seq = resolve_inputs([root / "dog" / "0.png", root / "cat" / "0.png"])
    assert seq.root.resolve() == root.resolve() and seq.paths[0].name == "0.png"


@pytest.mark.parametrize("spec, reason", [
    ("nowhere/at/all", "no such file or folder"),
    ("nowhere/*.jpg", "matches no image file"),
])
def test_resolve_inputs_errors(tmp_path: Path, spec: str, reason: str) -> None:
    from vitlens.data import resolve_inputs

    with pytest.raises(VitlensError, match=reason):
        resolve_inputs(str(tmp_path / spec))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitlensError, match="no image files below folder"):
        resolve_inputs(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    with pytest.raises(VitlensError, match="names no image"):
        resolve_inputs(tmp_path / "blank.txt")


def test_relative_name(tmp_path: Path) -> None:
    from vitlens.data import relative_name

    assert relative_name(tmp_path / "a" / "b.png", tmp_path) == "a/b.png"
    assert relative_name("/elsewhere/x.png", tmp_path) == "/elsewhere/x.png"


@pytest.mark.parametrize("workers", [0, 2])
def test_image_batches_keep_order_and_record_bad_files(tmp_path: Path, workers: int) -> None:
    import torch

    from vitlens.data import image_batches, resolve_inputs
    from vitlens.models import make_transform

    cfg = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
           "std": (0.25, 0.25, 0.25), "crop_pct": 1.0, "crop_mode": "center"}
    inputs = resolve_inputs(_tree(tmp_path))
    batches = list(image_batches(inputs.paths, cfg, batch_size=2, workers=workers))
    assert [b.index.tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    ok = torch.cat([b.ok for b in batches])
    assert ok.tolist() == [True, True, True, True, False]
    bad = batches[-1]
    assert bad.paths == [inputs.paths[4]]
    assert bad.errors[0].startswith("not a recognised image format")
    assert torch.equal(bad.images[0], torch.zeros(3, 16, 16))
    expected = make_transform(cfg)(load_image(inputs.paths[1]))          # independent single-image path
    assert torch.equal(batches[0].images[1], expected)
    assert all(e == "" for b in batches for e, o in zip(b.errors, b.ok.tolist()) if o)
    resumed = list(image_batches(inputs.paths, cfg, batch_size=2, start=3))
    assert [b.index.tolist() for b in resumed] == [[3, 4]]


def test_labels_from_folders(tmp_path: Path) -> None:
    from vitlens.data import labels_from_folders

    paths = [tmp_path / "Cat" / "1.png", tmp_path / "dog" / "2.png", tmp_path / "3" / "x.png"]
    assert labels_from_folders(paths, ["dog", "cat", "frog", "automobile"]).tolist() == [1, 0, 3]
    with pytest.raises(VitlensError, match=r"'cats' \(did you mean 'cat'\?\)"):
        labels_from_folders([tmp_path / "cats" / "1.png"], ["dog", "cat"])


# ------------------------------------------------------------------ CIFAR-10 reader
def _fake_cifar10(root):
    """test/<class>/NNNN.jpg for two classes (three images each, distinct colours) and one train image."""
    from vitlens.data.cifar10 import CLASSES

    for k, cls in enumerate(CLASSES[:2]):
        for i in range(3):
            p = root / "test" / cls / f"{i:04d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (40 * k + 10 * i, 0, 0)).save(p, quality=100)
    (root / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "train" / "cat" / "0000.jpg")


def test_cifar10_images_from_folder_and_archive(tmp_path, monkeypatch):
    import tarfile

    from vitlens.data.cifar10 import ENV, cifar10_images

    root = tmp_path / "CIFAR-10-images"
    _fake_cifar10(root)
    archive = tmp_path / "cifar10-jpg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(root.rglob("*")):
            tar.add(f, arcname=str(f.relative_to(root)), recursive=False)
    for source in (root, archive):
        all_test = cifar10_images(source)
        assert [(c, n) for c, n, _ in all_test] == [("airplane", f"{i:04d}.jpg") for i in range(3)] + \
                                                   [("automobile", f"{i:04d}.jpg") for i in range(3)]
        assert all(im.size == (32, 32) and im.mode == "RGB" for _, _, im in all_test)
        assert abs(all_test[4][2].getpixel((5, 5))[0] - 50) <= 2          # automobile 0001: red 40 + 10
        assert [(c, n) for c, n, _ in cifar10_images(source, per_class=1)] == [("airplane", "0000.jpg"),
                                                                              ("automobile", "0000.jpg")]
        only = cifar10_images(source, names=["0002.jpg"], decode=False)
        assert [(c, n) for c, n, _ in only] == [("airplane", "0002.jpg"), ("automobile", "0002.jpg")]
        assert only[0][2] == (root / "test" / "airplane" / "0002.jpg").read_bytes()
        assert [(c, n) for c, n, _ in cifar10_images(source, split="train")] == [("cat", "0000.jpg")]
    monkeypatch.delenv(ENV, raising=False)
    assert cifar10_images() == []                          # not configured: the caller falls back
    monkeypatch.setenv(ENV, str(archive))
    assert len(cifar10_images(per_class=2)) == 4
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\$VITLENS_CIFAR10 .*nowhere' does not exist"):
        cifar10_images()
    with pytest.raises(ValueError, match="no CIFAR-10 test images in"):
        cifar10_images(tmp_path / "CIFAR-10-images" / "test")
    with pytest.raises(ValueError, match="split must be"):
        cifar10_images(root, split="val")
