"""Tests for vitlens.export.figures (per-head matplotlib grids)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.layout_engine import TightLayoutEngine  # noqa: E402

from vitlens.export.figures import head_grid, save_figure  # noqa: E402
from vitlens.export.overlay import overlay  # noqa: E402

H, W = 300, 451


@pytest.fixture
def maps() -> np.ndarray:
    return np.random.default_rng(0).random((4, 8, 8))


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def image_axes(fig: Figure) -> list:
    """Visible axes that hold an image, in creation order (colourbars excluded)."""
    return [ax for ax in fig.axes if ax.images and ax.get_visible()]


def suptitle_text(fig: Figure) -> str:
    if hasattr(fig, "get_suptitle"):
        return fig.get_suptitle()
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def test_raw_maps_panels_titles_and_colourbar(maps: np.ndarray) -> None:
    fig = head_grid(maps, title="layer 3")
    assert isinstance(fig, Figure)
    axes = image_axes(fig)
    assert len(axes) == 4
    assert [ax.get_title() for ax in axes] == ["head 0", "head 1", "head 2", "head 3"]
    assert all(not ax.axison for ax in axes)
    assert suptitle_text(fig) == "layer 3"
    assert isinstance(fig.get_layout_engine(), TightLayoutEngine)
    # shared colour scale: every panel has the global min/max; one colourbar axis extra
    clims = {ax.images[0].get_clim() for ax in axes}
    assert clims == {(float(maps.min()), float(maps.max()))}
    assert len(fig.axes) == 5
    # raw map is shown as-is
    np.testing.assert_allclose(np.asarray(axes[2].images[0].get_array()), maps[2])


def test_fused_panel_added(maps: np.ndarray) -> None:
    fused = maps.mean(0)
    fig = head_grid(maps, fused=fused)
    axes = image_axes(fig)
    assert len(axes) == 5
    assert axes[-1].get_title() == "mean"
    np.testing.assert_allclose(np.asarray(axes[-1].images[0].get_array()), fused)


def test_with_image_shows_overlays(maps: np.ndarray, image: np.ndarray) -> None:
    box = (75.0, 0.0, 375.0, 300.0)
    fig = head_grid(maps, image, box=box, colormap="jet", alpha=0.7, fused=maps.max(0))
    axes = image_axes(fig)
    assert len(axes) == 5
    assert [ax.get_title() for ax in axes] == ["head 0", "head 1", "head 2", "head 3", "mean"]
    assert len(fig.axes) == 5  # no colourbar in overlay mode
    assert suptitle_text(fig) == ""
    for k, ax in enumerate(axes[:4]):
        shown = np.asarray(ax.images[0].get_array())
        assert shown.shape == (H, W, 3)
        np.testing.assert_array_equal(
            shown, overlay(image, maps[k], box=box, colormap="jet", alpha=0.7)
        )
        assert not ax.axison


def test_pil_image_and_non_square_grid(image: np.ndarray) -> None:
    m = np.random.default_rng(2).random((3, 14, 20))
    fig = head_grid(m, Image.fromarray(image))
    assert len(image_axes(fig)) == 3
    fig = head_grid(m)
    assert np.asarray(image_axes(fig)[0].images[0].get_array()).shape == (14, 20)


def test_accepts_torch_tensors(maps: np.ndarray, image: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor(maps, dtype=torch.float32, requires_grad=True)
    fig = head_grid(t, fused=t.mean(0))
    assert len(image_axes(fig)) == 5
    fig = head_grid(t, image, fused=t.mean(0))
    assert len(image_axes(fig)) == 5


def test_head_labels(maps: np.ndarray) -> None:
    fig = head_grid(maps, head_labels=["a", "b", "c", 7], fused=maps.mean(0))
    assert [ax.get_title() for ax in image_axes(fig)] == ["a", "b", "c", "7", "mean"]
    with pytest.raises(ValueError, match="head_labels"):
        head_grid(maps, head_labels=["a", "b"])


def test_single_2d_map_is_one_head() -> None:
    fig = head_grid(np.random.default_rng(3).random((8, 8)))
    assert [ax.get_title() for ax in image_axes(fig)] == ["head 0"]


def _geometry(fig: Figure) -> tuple[int, int]:
    ax = image_axes(fig)[0]
    nrows, ncols = ax.get_subplotspec().get_gridspec().get_geometry()
    return nrows, ncols


@pytest.mark.parametrize(
    ("heads", "fused", "ncols", "expected"),
    [
        (12, False, None, (3, 4)),   # ceil(sqrt(12)) = 4
        (3, True, None, (2, 2)),     # 4 panels -> 2x2
        (1, False, None, (1, 1)),
        (50, False, None, (9, 6)),   # capped at 6 columns
        (12, False, 2, (6, 2)),
        (3, False, 10, (1, 3)),      # never more columns than panels
    ],
)
def test_grid_layout(image: np.ndarray, heads: int, fused: bool, ncols, expected) -> None:
    m = np.random.default_rng(4).random((heads, 4, 4))
    fig = head_grid(m, image[:40, :60], ncols=ncols, fused=m.mean(0) if fused else None)
    assert _geometry(fig) == expected
    assert len(image_axes(fig)) == heads + int(fused)


def test_raw_mode_reserves_colourbar_column() -> None:
    m = np.random.default_rng(5).random((12, 4, 4))
    nrows, ncols = _geometry(head_grid(m))
    assert (nrows, ncols) == (3, 5)  # 4 panel columns + colourbar column


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"maps": np.zeros((1, 2, 8, 8))}, "maps"),
        ({"maps": np.zeros((0, 8, 8))}, "no heads"),
        ({"maps": np.full((2, 8, 8), np.nan)}, "NaN"),
        ({"fused": np.zeros((4, 4))}, "fused"),
        ({"ncols": 0}, "ncols"),
        ({"colormap": "virdis"}, "Did you mean 'viridis'"),
    ],
)
def test_validation(maps: np.ndarray, kwargs: dict, match: str) -> None:
    kwargs = {"maps": maps, **kwargs}
    with pytest.raises(ValueError, match=match):
        head_grid(**kwargs)


def test_bad_image_raises(maps: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image"):
        head_grid(maps, np.zeros((10, 10), dtype=np.uint8))


@pytest.mark.parametrize(
    ("ext", "magic"), [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<svg")]
)
@pytest.mark.parametrize("with_image", [False, True])
def test_save_figure_formats(tmp_path, maps, image, ext: str, magic: bytes, with_image) -> None:
    fig = head_grid(maps, image if with_image else None, title="t", fused=maps.mean(0))
    path = tmp_path / "sub" / "dir" / f"grid.{ext}"
    save_figure(fig, path, dpi=50)
    data = path.read_bytes()
    assert len(data) > 100
    assert magic in data[:2048]


def test_save_figure_png_dpi(tmp_path, maps) -> None:
    fig = head_grid(maps)
    w_in, h_in = fig.get_size_inches()
    save_figure(fig, str(tmp_path / "g.PNG"), dpi=40)
    with Image.open(tmp_path / "g.PNG") as im:
        assert im.size == (round(w_in * 40), round(h_in * 40))


def test_save_figure_errors(tmp_path, maps) -> None:
    fig = head_grid(maps)
    with pytest.raises(ValueError, match="format"):
        save_figure(fig, tmp_path / "g.jpg")
    with pytest.raises(ValueError, match="format"):
        save_figure(fig, tmp_path / "noext")
    with pytest.raises(ValueError, match="dpi"):
        save_figure(fig, tmp_path / "g.png", dpi=0)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot save figure"):
        save_figure(fig, blocker / "g.png")


def test_import_and_use_do_not_touch_pyplot(tmp_path) -> None:
    code = (
        "import sys\n"
        "import vitlens.export.figures as f\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported at import'\n"
        "import numpy as np, tempfile, os\n"
        "fig = f.head_grid(np.random.rand(2, 4, 4), fused=np.random.rand(4, 4))\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    f.save_figure(fig, os.path.join(d, 'x.png'), dpi=30)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported by use'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
