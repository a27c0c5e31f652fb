"""Tests for vitlens.export.overlay (OpenCV attention overlays)."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from vitlens.export.overlay import COLORMAPS, colormap_lut, overlay, save_png

H, W = 300, 451  # deliberately non-square, odd width


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture
def attn8() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.random((8, 8))


def _reference_colour(m: np.ndarray, size_wh: tuple[int, int], inter: int) -> np.ndarray:
    """Colour layer computed independently: minmax -> resize -> clip -> 8-bit -> colormap."""
    m = m.astype(np.float64)
    norm = ((m - m.min()) / (m.max() - m.min())).astype(np.float32)
    up = np.clip(cv2.resize(norm, size_wh, interpolation=inter), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(up * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return bgr[:, :, ::-1]


# --------------------------------------------------------------------------- basics


def test_colormaps_has_common_names() -> None:
    for name in ("jet", "inferno", "viridis", "magma", "plasma", "turbo", "hot", "bone"):
        assert name in COLORMAPS
    assert all(name == name.lower() for name in COLORMAPS)
    assert COLORMAPS["jet"] == cv2.COLORMAP_JET


def test_colormap_lut_matches_cv2() -> None:
    lut = colormap_lut("viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(-1, 1), cv2.COLORMAP_VIRIDIS)
    np.testing.assert_array_equal(lut, bgr.reshape(256, 3)[:, ::-1])


@pytest.mark.parametrize("grid", [(8, 8), (14, 20), (14, 14), (1, 1), (3, 1)])
@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic", "area"])
def test_output_shape_and_dtype(image: np.ndarray, grid: tuple[int, int], interpolation: str) -> None:
    m = np.random.default_rng(2).random(grid)
    out = overlay(image, m, interpolation=interpolation)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8
    out = overlay(image, m, box=(75.3, 0.0, 375.2, 300.0), interpolation=interpolation)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8


def test_pil_image_and_torch_tensor(image: np.ndarray, attn8: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    ref = overlay(image, attn8)
    pil = Image.fromarray(image)
    np.testing.assert_array_equal(overlay(pil, attn8), ref)
    # a non-RGB PIL image is converted
    assert overlay(pil.convert("L"), attn8).shape == (H, W, 3)
    tensor = torch.tensor(attn8, dtype=torch.float32, requires_grad=True)
    out = overlay(image, tensor)
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, overlay(image, attn8.astype(np.float32)))


def test_input_image_not_modified(image: np.ndarray, attn8: np.ndarray) -> None:
    before = image.copy()
    overlay(image, attn8, box=(50, 20, 300, 280), alpha=1.0, outside=0.0)
    np.testing.assert_array_equal(image, before)


def test_readonly_image_accepted(image: np.ndarray, attn8: np.ndarray) -> None:
    image.setflags(write=False)
    assert overlay(image, attn8).shape == (H, W, 3)


# --------------------------------------------------------------------------- blending


def test_alpha_zero_is_the_image(image: np.ndarray, attn8: np.ndarray) -> None:
    np.testing.assert_array_equal(overlay(image, attn8, alpha=0.0), image)
    out = overlay(image, attn8, alpha=0.0, box=(100, 30, 400, 270), outside=0.4)
    np.testing.assert_array_equal(out[30:270, 100:400], image[30:270, 100:400])


@pytest.mark.parametrize(
    ("interpolation", "flag"),
    [("cubic", cv2.INTER_CUBIC), ("linear", cv2.INTER_LINEAR), ("nearest", cv2.INTER_NEAREST),
     ("area", cv2.INTER_AREA)],
)
def test_alpha_one_is_pure_colormap(image: np.ndarray, interpolation: str, flag: int) -> None:
    m = np.random.default_rng(3).random((14, 20))
    out = overlay(image, m, alpha=1.0, colormap="jet", interpolation=interpolation)
    np.testing.assert_array_equal(out, _reference_colour(m, (W, H), flag))


def test_alpha_one_nearest_blocks_use_lut(image: np.ndarray) -> None:
    # 8x8 map onto a 160x160 box: every cell is a uniform 20x20 block of its LUT colour.
    m = np.arange(64, dtype=np.float64).reshape(8, 8)
    out = overlay(image, m, alpha=1.0, colormap="jet", interpolation="nearest",
                  box=(10, 20, 170, 180))
    lut = colormap_lut("jet")
    for r in range(8):
        for c in range(8):
            level = int(round(m[r, c] / 63 * 255))
            block = out[20 + 20 * r: 40 + 20 * r, 10 + 20 * c: 30 + 20 * c]
            assert (block == lut[level]).all(), (r, c)


def test_half_alpha_is_weighted_mean(image: np.ndarray, attn8: np.ndarray) -> None:
    colour = overlay(image, attn8, alpha=1.0)
    out = overlay(image, attn8, alpha=0.5)
    expected = 0.5 * colour.astype(float) + 0.5 * image.astype(float)
    np.testing.assert_allclose(out.astype(float), expected, atol=1.0)


@pytest.mark.parametrize(
    ("cell", "quadrant"),
    [((0, 0), "tl"), ((0, 7), "tr"), ((7, 0), "bl"), ((7, 7), "br")],
)
@pytest.mark.parametrize("box", [None, (75.0, 0.0, 375.0, 300.0)])
def test_hot_cell_lands_in_right_quadrant(cell, quadrant, box) -> None:
    gray = np.full((H, W, 3), 128, dtype=np.uint8)
    m = np.zeros((8, 8))
    m[cell] = 1.0
    out = overlay(gray, m, colormap="jet", alpha=0.6, box=box).astype(int)
    redness = out[:, :, 0] - out[:, :, 2]  # jet: hot = red, cold = blue
    x0, y0, x1, y1 = (0, 0, W, H) if box is None else (int(v) for v in box)
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
    quads = {
        "tl": redness[y0:ym, x0:xm].sum(),
        "tr": redness[y0:ym, xm:x1].sum(),
        "bl": redness[ym:y1, x0:xm].sum(),
        "br": redness[ym:y1, xm:x1].sum(),
    }
    assert max(quads, key=quads.get) == quadrant
    # the single reddest pixel is within the hot cell's footprint
    yy, xx = np.unravel_index(np.argmax(redness), redness.shape)
    cw, ch = (x1 - x0) / 8, (y1 - y0) / 8
    assert x0 + cell[1] * cw - 1 <= xx < x0 + (cell[1] + 1) * cw + 1
    assert y0 + cell[0] * ch - 1 <= yy < y0 + (cell[0] + 1) * ch + 1


def test_box_outside_darkened_inside_blended(image: np.ndarray, attn8: np.ndarray) -> None:
    box = (75.4, 10.2, 374.6, 289.8)  # rounds to (75, 10, 375, 290)
    x0, y0, x1, y1 = 75, 10, 375, 290
    out = overlay(image, attn8, box=box, alpha=0.5, outside=0.4, colormap="jet")
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    expected_outside = np.round(image.astype(float) * 0.4)
    np.testing.assert_allclose(out[~mask].astype(float), expected_outside[~mask], atol=0.51)
    colour = _reference_colour(attn8, (x1 - x0, y1 - y0), cv2.INTER_CUBIC)
    expected_inside = cv2.addWeighted(
        np.ascontiguousarray(colour), 0.5, np.ascontiguousarray(image[y0:y1, x0:x1]), 0.5, 0.0
    )
    np.testing.assert_array_equal(out[y0:y1, x0:x1], expected_inside)


def test_outside_one_leaves_outside_untouched(image: np.ndarray, attn8: np.ndarray) -> None:
    out = overlay(image, attn8, box=(100, 0, 300, 300), outside=1.0)
    np.testing.assert_array_equal(out[:, :100], image[:, :100])
    np.testing.assert_array_equal(out[:, 300:], image[:, 300:])
    out0 = overlay(image, attn8, box=(100, 0, 300, 300), outside=0.0)
    assert (out0[:, :100] == 0).all() and (out0[:, 300:] == 0).all()


def test_box_is_clipped_to_image(image: np.ndarray, attn8: np.ndarray) -> None:
    full = overlay(image, attn8)
    np.testing.assert_array_equal(overlay(image, attn8, box=(-40.0, -5.0, 900.0, 700.0)), full)
    np.testing.assert_array_equal(overlay(image, attn8, box=np.array([0, 0, W, H])), full)


def test_normalize_modes(image: np.ndarray) -> None:
    lut = colormap_lut("inferno")  # the default colormap
    constant = np.full((8, 8), 3.7)
    out = overlay(image, constant, alpha=1.0)  # minmax of a constant map -> zeros
    assert (out == lut[0]).all()
    big = np.full((8, 8), 5.0)  # "none" clips to 1
    out = overlay(image, big, alpha=1.0, normalize="none")
    assert (out == lut[255]).all()
    half = np.full((8, 8), 0.5)
    out = overlay(image, half, alpha=1.0, normalize="none", interpolation="nearest")
    assert (out == lut[128]).all()


def test_colormap_name_case_insensitive(image: np.ndarray, attn8: np.ndarray) -> None:
    np.testing.assert_array_equal(
        overlay(image, attn8, colormap="Inferno"), overlay(image, attn8, colormap="inferno")
    )


# --------------------------------------------------------------------------- validation


def test_unknown_colormap_suggests(image: np.ndarray, attn8: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown colormap") as exc:
        overlay(image, attn8, colormap="infernoo")
    msg = str(exc.value)
    assert "Did you mean 'inferno'" in msg
    assert "viridis" in msg and "jet" in msg  # lists valid names


def test_unknown_interpolation_and_normalize(image: np.ndarray, attn8: np.ndarray) -> None:
    with pytest.raises(ValueError, match="interpolation.*Did you mean 'cubic'"):
        overlay(image, attn8, interpolation="bicubic")
    with pytest.raises(ValueError, match="normalize"):
        overlay(image, attn8, normalize="zscore")


@pytest.mark.parametrize("alpha", [-0.01, 1.01, float("nan")])
def test_bad_alpha(image: np.ndarray, attn8: np.ndarray, alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, attn8, alpha=alpha)


@pytest.mark.parametrize("outside", [-0.1, 1.5])
def test_bad_outside(image: np.ndarray, attn8: np.ndarray, outside: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        overlay(image, attn8, outside=outside)


@pytest.mark.parametrize("shape", [(64,), (2, 8, 8), (1, 1, 8, 8), (0, 8)])
def test_map_not_2d(image: np.ndarray, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="attention map"):
        overlay(image, np.zeros(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_map_not_finite(image: np.ndarray, attn8: np.ndarray, bad: float) -> None:
    attn8[3, 4] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        overlay(image, attn8)


@pytest.mark.parametrize("shape", [(H, W), (H, W, 4), (H, W, 1), (0, W, 3)])
def test_image_not_hxwx3(attn8: np.ndarray, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="image"):
        overlay(np.zeros(shape, dtype=np.uint8), attn8)


def test_image_wrong_dtype(image: np.ndarray, attn8: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32) / 255, attn8)


@pytest.mark.parametrize(
    "box",
    [(100, 50, 100, 200), (200, 50, 100, 200), (500, 0, 600, 300), (0, -20, W, -1),
     (10.2, 10, 10.2, 50)],
)
def test_empty_box(image: np.ndarray, attn8: np.ndarray, box) -> None:
    with pytest.raises(ValueError, match="empty"):
        overlay(image, attn8, box=box)


@pytest.mark.parametrize("box", [(0, 0, 10), (0, 0, float("nan"), 10), ("a", 0, 1, 1)])
def test_malformed_box(image: np.ndarray, attn8: np.ndarray, box) -> None:
    with pytest.raises(ValueError, match="box"):
        overlay(image, attn8, box=box)


# --------------------------------------------------------------------------- save_png


def test_save_png_round_trip(tmp_path, image: np.ndarray, attn8: np.ndarray) -> None:
    rgb = overlay(image, attn8, box=(50, 0, 350, 300))
    path = tmp_path / "deep" / "nested" / "out.png"
    save_png(path, rgb)
    assert path.is_file()
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), rgb)
    # PIL agrees on the channel order
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), rgb)


def test_save_png_str_path_and_overwrite(tmp_path, image: np.ndarray) -> None:
    path = str(tmp_path / "o.PNG")
    save_png(path, np.zeros_like(image))
    save_png(path, image)
    back = cv2.imread(path, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(back[:, :, ::-1], image)


def test_save_png_errors(tmp_path, image: np.ndarray) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cannot write PNG"):
        save_png(blocker / "out.png", image)
    with pytest.raises(ValueError, match=r"\.png"):
        save_png(tmp_path / "out.jpg", image)
    with pytest.raises(ValueError, match="image"):
        save_png(tmp_path / "gray.png", image[:, :, 0])


def test_module_does_not_import_matplotlib(tmp_path) -> None:
    # torch is loaded by the vitlens package itself; overlay only needs numpy + OpenCV
    code = (
        "import sys, vitlens.export.overlay\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_sub_pixel_box_still_covers_its_pixel(image: np.ndarray, attn8: np.ndarray) -> None:
    """A box thinner than one pixel (e.g. from a 1-px-wide image) colours that pixel column."""
    out = overlay(image, attn8, box=(10.2, 10, 10.4, 50), alpha=1.0, outside=1.0)
    changed = np.any(out != image, axis=2)
    assert changed[10:50, 10].any() and not changed[:, :10].any() and not changed[:, 11:].any()


def test_default_colormap_is_perceptually_uniform(image: np.ndarray, attn8: np.ndarray) -> None:
    """The default is inferno: its lightness rises monotonically with the value (jet's does not)."""
    from vitlens.export.overlay import DEFAULT_COLORMAP

    assert DEFAULT_COLORMAP == "inferno"
    np.testing.assert_array_equal(overlay(image, attn8), overlay(image, attn8, colormap="inferno"))
    lab = cv2.cvtColor(colormap_lut("inferno")[None], cv2.COLOR_RGB2LAB)[0, :, 0].astype(int)
    assert (np.diff(lab) >= -1).all() and lab[-1] - lab[0] > 200
    jet = cv2.cvtColor(colormap_lut("jet")[None], cv2.COLOR_RGB2LAB)[0, :, 0].astype(int)
    assert (np.diff(jet) < -1).any()
