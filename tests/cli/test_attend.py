"""Tests for ``vitlens attend`` (cli/attend.py, cli/common.py).

Most tests run the click command in-process with ``CliRunner`` and the bundled 32x32
demo ViT; two run the installed ``vitlens`` console script in a subprocess. Nothing
touches the network: the "no --model" test makes the hub unreachable and the HF cache
empty.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitlens

from .helpers import assert_one_line_error, run, stderr_lines

REPO_ROOT = Path(__file__).resolve().parents[2]
CHELSEA = REPO_ROOT / "examples" / "chelsea.jpg"
COFFEE = REPO_ROOT / "examples" / "coffee.jpg"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CONTRACT_OPTIONS = ["--model", "--checkpoint", "--pretrained", "--no-pretrained", "--layer", "--head",
                    "--method", "--target", "--out", "--alpha", "--colormap", "--device"]



# ---------------------------------------------------------------------------- helpers
def attend(*args, out: Path, model: str | None = "demo", bare: bool = True):
    """``vitlens attend``; ``bare``: without the title strip, colour bar and contours, so the
    PNG is the overlay itself at the image's size (the framed one is tested separately)."""
    extra = ["--model", model] if model else []
    return run("attend", *args, *extra, "--out", out, *(["--no-annotate", "--no-contours"] if bare else []))


TOP5 = re.compile(r"^(?P<path>.+): (?P<preds>(?:[a-z]+ \d\.\d{3}, ){4}[a-z]+ \d\.\d{3})$")


def top5_lines(stdout: str) -> dict[str, list[str]]:
    """``{input path: [5 class names]}`` from the prediction lines."""
    found = {}
    for line in stdout.splitlines():
        m = TOP5.match(line)
        if m:
            found[m["path"]] = [p.rsplit(" ", 1)[0] for p in m["preds"].split(", ")]
    return found


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def save_small_jpeg(path: Path, size=(48, 40)) -> Path:
    """A small real photo (downscaled chelsea) so in-process runs stay cheap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(CHELSEA).convert("RGB").resize(size).save(path, "JPEG", quality=90)
    return path


@pytest.fixture
def small_jpg(tmp_path) -> Path:
    return save_small_jpeg(tmp_path / "in" / "small.jpg")


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


# ------------------------------------------------------------------------------- help
def test_top_level_help_lists_attend():
    result = run("--help")
    assert result.exit_code == 0
    assert re.search(r"^\s+attend\b", result.stdout, re.M), result.stdout


def test_attend_help_lists_every_contract_option():
    result = run("attend", "--help")
    assert result.exit_code == 0
    for opt in CONTRACT_OPTIONS:
        assert re.search(rf"(^|[\s,/]){re.escape(opt)}\b", result.stdout), opt
    assert "--method [cls|rollout]" in result.stdout or "cls|rollout" in result.stdout


# ------------------------------------------------------------------------ end to end
def test_two_images_in_one_call(out):
    result = attend(CHELSEA, COFFEE, out=out)
    assert result.exit_code == 0, result.stderr
    written = pngs(out)
    assert len(written) == 2
    assert {p.name.split("_")[0] for p in written} == {"chelsea", "coffee"}
    for src in (CHELSEA, COFFEE):
        (png,) = [p for p in written if p.name.startswith(src.stem + "_")]
        with Image.open(png) as im, Image.open(src) as orig:
            assert im.format == "PNG"
            assert im.size == orig.size
        assert str(png) in result.stdout
    tops = top5_lines(result.stdout)
    assert set(tops) == {str(CHELSEA), str(COFFEE)}, result.stdout
    for names in tops.values():
        assert len(names) == 5 and len(set(names)) == 5
        assert set(names) <= set(CIFAR10)
    assert stderr_lines(result) == []


def test_rollout(small_jpg, out):
    result = attend(small_jpg, "--method", "rollout", out=out)
    assert result.exit_code == 0, result.stderr
    (png,) = pngs(out)
    assert "rollout" in png.name and png.name.startswith("small_")
    with Image.open(png) as im:
        assert im.size == (48, 40)
    assert str(small_jpg) in top5_lines(result.stdout)


def test_head_all_writes_a_head_grid(small_jpg, out):
    result = attend(small_jpg, "--head", "all", out=out)
    assert result.exit_code == 0, result.stderr
    (png,) = pngs(out)
    assert "heads" in png.name and png.name.startswith("small__demo__")
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.width > 48 and im.height > 40  # a figure with one panel per head, not an overlay
    assert str(small_jpg) in top5_lines(result.stdout)


@pytest.mark.parametrize("args, part", [(["--head", "2"], "__cls_L5_h2."), (["--layer", "0"], "__cls_L0_hmean."),
                                        (["--layer", "-6", "--head", "max"], "__cls_L0_hmax.")])
def test_layer_and_head_selection(args, part, small_jpg, out):
    result = attend(small_jpg, *args, out=out)
    assert result.exit_code == 0, result.stderr
    (png,) = pngs(out)
    assert part in png.name, png.name
    with Image.open(png) as im:
        assert im.size == (48, 40)


def test_head_and_layer_change_the_overlay(small_jpg, tmp_path):
    a = attend(small_jpg, "--head", "0", out=tmp_path / "a")
    b = attend(small_jpg, "--head", "1", out=tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0
    (pa,), (pb,) = pngs(tmp_path / "a"), pngs(tmp_path / "b")
    assert not np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))


def test_alpha_zero_leaves_the_image_inside_the_crop_box(out):
    result = attend(CHELSEA, "--alpha", "0", out=out)
    assert result.exit_code == 0, result.stderr
    (png,) = pngs(out)
    got = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    img = vitlens.load_image(CHELSEA)
    orig = np.asarray(img).astype(np.int16)
    assert got.shape == orig.shape == (300, 451, 3)
    # the demo centre-crops the short side (crop_pct 1.0, crop_mode "center"): the box is
    # the middle 300x300 square, not the whole 451x300 image
    _, cfg = vitlens.load_model("demo", device="cpu")
    assert cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "center"
    x0, y0, x1, y1 = vitlens.preprocess(img, cfg).box
    assert (x0, y0, x1, y1) == pytest.approx(((451 - 300) / 2, 0, (451 + 300) / 2, 300), abs=1)
    ix0, ix1 = int(np.ceil(x0)) + 1, int(np.floor(x1)) - 1
    inside_diff = np.abs(got[:, ix0:ix1] - orig[:, ix0:ix1])
    assert inside_diff.max() <= 2, inside_diff.max()
    # outside the box the image is dimmed, not coloured
    left = got[:, : int(x0) - 1]
    assert left.size and np.all(left <= orig[:, : int(x0) - 1])
    assert np.abs(left - np.round(orig[:, : int(x0) - 1] * 0.4)).max() <= 2


def test_alpha_one_colours_the_crop_box(small_jpg, out):
    result = attend(small_jpg, "--alpha", "1", "--colormap", "viridis", out=out)
    assert result.exit_code == 0, result.stderr
    (png,) = pngs(out)
    orig = np.asarray(vitlens.load_image(small_jpg)).astype(np.int16)
    got = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    assert np.abs(got[:, 10:38] - orig[:, 10:38]).mean() > 10


# ------------------------------------------------------------ explain methods, --target
EXPLAINS = re.compile(r"^  explains: (?P<name>[a-z]+) \(class (?P<idx>\d), p=(?P<p>\d\.\d{3})\)$", re.M)


def test_help_lists_every_explain_method():
    result = run("attend", "--help")
    for method in vitlens.EXPLAIN_METHODS:
        assert method in result.stdout, method


@pytest.mark.parametrize("method", [m for m in vitlens.EXPLAIN_METHODS if m not in ("cls", "rollout")])
def test_every_method_writes_an_overlay(method, small_jpg, out):
    result = attend(small_jpg, "--method", method, out=out)
    assert result.exit_code == 0, result.stderr
    (png,) = pngs(out)
    assert png.name.startswith(f"small__demo__{method}"), png.name
    with Image.open(png) as im:
        assert im.size == (48, 40)
    top = top5_lines(result.stdout)[str(small_jpg)]
    found = EXPLAINS.findall(result.stdout)
    if method == "random":
        assert found == []
    else:  # default target: the predicted class, named in the output and the file name
        assert len(found) == 1 and found[0][0] == top[0], result.stdout
        assert png.name.endswith(f"_t-{top[0]}.png"), png.name


def test_target_by_index_or_name_and_it_changes_the_map(small_jpg, tmp_path):
    by_index = attend(small_jpg, "--method", "grad-rollout", "--target", "3", out=tmp_path / "a")
    by_name = attend(small_jpg, "--method", "grad-rollout", "--target", "cat", out=tmp_path / "b")
    other = attend(small_jpg, "--method", "grad-rollout", "--target", "ship", out=tmp_path / "c")
    for r in (by_index, by_name, other):
        assert r.exit_code == 0, r.stderr
    assert EXPLAINS.search(by_index.stdout)["name"] == "cat" and EXPLAINS.search(by_index.stdout)["idx"] == "3"
    assert EXPLAINS.search(other.stdout)["name"] == "ship"
    (a,), (b,), (c,) = pngs(tmp_path / "a"), pngs(tmp_path / "b"), pngs(tmp_path / "c")
    assert a.name == b.name == "small__demo__grad-rollout_t-cat.png" and c.name == "small__demo__grad-rollout_t-ship.png"
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c)))


def test_overlay_is_the_explain_map(small_jpg, out):
    """The PNG is exactly vitlens.explain's map drawn by export.overlay: the CLI adds no analysis."""
    from vitlens.export.overlay import overlay

    result = attend(small_jpg, "--method", "chefer", "--target", "5", out=out)
    assert result.exit_code == 0, result.stderr
    model, cfg = vitlens.load_model("demo", device="cpu")
    img = vitlens.load_image(small_jpg)
    pre = vitlens.preprocess(img, cfg)
    m = vitlens.explain(model, pre.tensor[None], "chefer", target=5)[0]
    want = overlay(img, m, box=pre.box)
    (png,) = pngs(out)
    got = np.asarray(Image.open(png).convert("RGB"))
    assert np.abs(got.astype(int) - np.asarray(want).astype(int)).max() <= 1


def test_target_with_a_class_agnostic_method_is_a_usage_error(small_jpg, out):
    result = attend(small_jpg, "--method", "rollout", "--target", "3", out=out)
    assert result.exit_code == 2 and "--target" in result.stderr and "grad-rollout" in result.stderr
    assert not out.exists()


def test_target_out_of_range(small_jpg, out):
    assert_one_line_error(attend(small_jpg, "--method", "chefer", "--target", "10", out=out),
                          "target class 10", "0..9")


def test_unknown_target_name_suggests(small_jpg, out):
    result = attend(small_jpg, "--method", "ig", "--target", "kat", out=out)
    assert result.exit_code == 2 and "'cat'" in result.stderr and "Traceback" not in result.stderr


def test_unknown_method_is_a_usage_error(small_jpg, out):
    result = attend(small_jpg, "--method", "gradrollout", out=out)
    assert result.exit_code == 2 and "grad-rollout" in result.stderr


# ------------------------------------------------------------------- default model
def test_default_model_falls_back_to_demo_when_offline(monkeypatch, tmp_path, small_jpg, out):
    import huggingface_hub.constants as hf_constants

    from vitlens import models

    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if hasattr(hf_constants, name):
            monkeypatch.setattr(hf_constants, name, str(hf_home / "hub"))
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    offline_before = hf_constants.HF_HUB_OFFLINE

    result = attend(small_jpg, out=out, model=None)
    assert result.exit_code == 0, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "demo" in lines[0] and "--model" in lines[0]
    assert "Traceback" not in result.stderr
    names = top5_lines(result.stdout)[str(small_jpg)]
    assert set(names) <= set(CIFAR10)
    assert len(pngs(out)) == 1
    assert hf_constants.HF_HUB_OFFLINE == offline_before


def test_checkpoint_without_model_is_a_usage_error(small_jpg, tmp_path, out):
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"x")
    result = attend(small_jpg, "--checkpoint", ckpt, out=out, model=None)
    assert result.exit_code == 2
    assert "--checkpoint" in result.stderr and "--model" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------ out names
def test_output_names_never_escape_out(tmp_path):
    odd = save_small_jpeg(tmp_path / "a b;c.jpg")
    deep = save_small_jpeg(tmp_path / "x" / "y" / "dots.jpg")
    dotted = str(tmp_path / "x" / "y" / ".." / ".." / "x" / "y" / "dots.jpg")  # same file via '..'
    hidden = save_small_jpeg(tmp_path / "..jpg")
    traversal_name = save_small_jpeg(tmp_path / "..%2F..%2Fescape.jpg")
    out = tmp_path / "deep" / "out"
    result = run("attend", odd, dotted, deep, hidden, traversal_name, "--model", "demo", "--out", out, "--no-annotate")
    assert result.exit_code == 0, result.stderr
    written = pngs(out)
    assert len(written) == 5 and len({p.name for p in written}) == 5
    for p in written:
        assert p.parent.resolve() == out.resolve()
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png", p.name), p.name
    # nothing written anywhere else
    assert sorted(tmp_path.rglob("*.png")) == sorted(written)
    assert any(p.name.startswith("a_b_c_") for p in written)


def test_same_file_name_in_two_folders_gives_two_files(tmp_path, out):
    a = save_small_jpeg(tmp_path / "a" / "img.jpg", size=(48, 40))
    b = save_small_jpeg(tmp_path / "b" / "img.jpg", size=(40, 48))
    result = run("attend", a, b, "--model", "demo", "--out", out, "--no-annotate")
    assert result.exit_code == 0, result.stderr
    written = pngs(out)
    assert len(written) == 2
    sizes = sorted(Image.open(p).size for p in written)
    assert sizes == [(40, 48), (48, 40)]
    # each "wrote" line names a different file
    wrote = re.findall(r"wrote (.+\.png)", result.stdout)
    assert len(set(wrote)) == 2


# ---------------------------------------------------------------------- bad inputs
def _truncated_jpeg(tmp_path: Path) -> Path:
    data = CHELSEA.read_bytes()
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    return p


def _text_jpeg(tmp_path: Path) -> Path:
    p = tmp_path / "page.jpg"
    p.write_text("<html>not an image</html>\n")
    return p


def _empty_png(tmp_path: Path) -> Path:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    return p


@pytest.mark.parametrize("make, reason", [
    (lambda t: t / "no_such.jpg", "no such file"),
    (lambda t: t, "directory"),
    (_text_jpeg, "not a recognised image"),
    (_truncated_jpeg, "truncated"),
    (_empty_png, "empty"),
], ids=["missing", "directory", "text", "truncated", "zero-byte"])
def test_bad_image(make, reason, tmp_path, out):
    path = make(tmp_path)
    result = attend(path, out=out)
    line = assert_one_line_error(result, reason)
    assert str(path) in line
    assert not out.exists() or not pngs(out)


def test_decompression_bomb(monkeypatch, out):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    result = attend(CHELSEA, out=out)
    assert_one_line_error(result, "decompression-bomb", "MAX_IMAGE_PIXELS", str(CHELSEA))


def test_layer_out_of_range(small_jpg, out):
    assert_one_line_error(attend(small_jpg, "--layer", "99", out=out), "layer 99", "0..5")


def test_head_out_of_range(small_jpg, out):
    assert_one_line_error(attend(small_jpg, "--head", "9", out=out), "head 9", "0..3")


def test_bad_head_word(small_jpg, out):
    result = attend(small_jpg, "--head", "avg", out=out)
    assert result.exit_code == 2
    assert "mean" in result.stderr and "Traceback" not in result.stderr


def test_unknown_model_suggests_close_matches(small_jpg, out):
    assert_one_line_error(attend(small_jpg, out=out, model="vit_bse_patch16_224"),
                          "vit_bse_patch16_224", "vit_base_patch16_224")


def test_unsupported_architecture(small_jpg, out):
    result = run("attend", small_jpg, "--model", "resnet18", "--no-pretrained", "--out", out)
    assert_one_line_error(result, "VisionTransformer", "ResNet")


@pytest.fixture(scope="module")
def vit_tiny_state_dict(tmp_path_factory) -> Path:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "vit_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def test_checkpoint_that_does_not_fit(small_jpg, out, vit_tiny_state_dict):
    result = attend(small_jpg, "--checkpoint", vit_tiny_state_dict, out=out)
    line = assert_one_line_error(result, "does not fit", str(vit_tiny_state_dict), "'demo'")
    assert "not in the model: blocks.10." in line  # vit_tiny has 12 blocks, the demo 6
    assert "shape differs" in line and "192" in line and "128" in line


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_object_checkpoint_is_refused(small_jpg, tmp_path, out):
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Marker(str(marker))}, ckpt)
    assert_one_line_error(attend(small_jpg, "--checkpoint", ckpt, out=out), "pickled", str(ckpt))
    assert not marker.exists()


def test_rollout_with_head_all_is_a_usage_error(small_jpg, out):
    result = attend(small_jpg, "--method", "rollout", "--head", "all", out=out)
    assert result.exit_code == 2
    assert "--head" in result.stderr and "Error" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_bad_colormap_suggests_a_close_name(small_jpg, out):
    line = assert_one_line_error(attend(small_jpg, "--colormap", "virdis", out=out), "virdis")
    assert "viridis" in line


@pytest.mark.parametrize("device, reason", [("cuda", "CUDA"), ("bogus", "bogus")])
def test_bad_device(device, reason, small_jpg, out):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert_one_line_error(attend(small_jpg, "--device", device, out=out), reason)


def test_debug_shows_the_traceback(small_jpg, out):
    result = attend(small_jpg, "--layer", "99", "--debug", out=out)
    assert result.exit_code != 0
    assert isinstance(result.exception, ValueError) and not isinstance(result.exception, SystemExit)
    assert "layer 99" in str(result.exception)
    assert result.exc_info is not None and result.exc_info[2] is not None
    assert "vitlens: error" not in result.stderr


def test_vitlens_debug_env_shows_the_traceback(monkeypatch, small_jpg, out):
    monkeypatch.setenv("VITLENS_DEBUG", "1")
    result = attend(small_jpg, "--head", "9", out=out)
    assert isinstance(result.exception, ValueError)


def test_debug_shows_the_traceback_for_a_bad_image(tmp_path, out):
    result = attend(tmp_path / "missing.jpg", "--debug", out=out)
    assert isinstance(result.exception, vitlens.ImageLoadError)


def test_out_that_cannot_be_created(small_jpg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("attend", small_jpg, "--model", "demo", "--out", blocker / "sub")
    assert_one_line_error(result, str(blocker))


@pytest.mark.parametrize("size", [(1, 300), (300, 1)])
def test_one_pixel_thin_image(size, tmp_path, out):
    path = tmp_path / "line.png"
    Image.new("RGB", size, (120, 60, 30)).save(path)
    result = attend(path, out=out)
    assert result.exit_code == 0, result.stderr
    (png,) = pngs(out)
    assert Image.open(png).size == size


# ---------------------------------------------------------------- odd image modes
def _make_odd_images(folder: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(CHELSEA).convert("RGB").resize((40, 24))
    made = {}

    def add(name, img, size=(40, 24), **save):
        p = folder / name
        img.save(p, **save)
        made[name] = (p, size)

    add("grey.png", base.convert("L"))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((40, 24)))
    add("rgba.png", rgba)
    add("palette.gif", base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    grey16 = Image.fromarray(arr16)
    assert grey16.mode.startswith("I;16")
    add("grey16.png", grey16)
    add("cmyk.jpg", base.convert("CMYK"), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    add("rotated.jpg", base, size=(24, 40), exif=exif.tobytes(), quality=90)
    return made


def test_odd_image_modes_all_succeed(tmp_path, out):
    made = _make_odd_images(tmp_path / "odd")
    assert Image.open(made["grey16.png"][0]).mode in ("I;16", "I")
    assert Image.open(made["cmyk.jpg"][0]).mode == "CMYK"
    assert Image.open(made["palette.gif"][0]).mode == "P"
    result = run("attend", *[p for p, _ in made.values()], "--model", "demo", "--out", out, "--no-annotate")
    assert result.exit_code == 0, result.stderr
    # 40x24 is below the demo's 32x32 input height: one warning per image, nothing else
    assert all("smaller than the model's 32x32 input" in line for line in stderr_lines(result)), result.stderr
    written = {p.name.split("__demo__", 1)[0]: p for p in pngs(out)}
    assert len(written) == len(made)
    for name, (src, size) in made.items():
        png = written[Path(name).stem]
        with Image.open(png) as im:
            assert im.size == size, (name, im.size)
            assert im.mode == "RGB"
        assert str(src) in top5_lines(result.stdout)


# ------------------------------------------------------------------------------ mix
def test_mix_of_good_and_bad_images(small_jpg, tmp_path, out):
    bad = _truncated_jpeg(tmp_path)
    missing = tmp_path / "gone.jpg"
    result = attend(bad, small_jpg, missing, out=out)
    assert result.exit_code == 3
    (png,) = pngs(out)
    assert png.name.startswith("small_")
    assert list(top5_lines(result.stdout)) == [str(small_jpg)]
    err = result.stderr
    assert "Traceback" not in err
    assert str(bad) in err and "truncated" in err
    assert str(missing) in err and "no such file" in err
    assert "2 of 3" in err


# -------------------------------------------------------------------- subprocesses
def _console_script() -> str:
    exe = shutil.which("vitlens")
    if exe is None:  # fall back to the script next to this interpreter
        cand = Path(sys.executable).with_name("vitlens")
        if not cand.exists():
            pytest.skip("the vitlens console script is not installed")
        exe = str(cand)
    return exe


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VITLENS_DEBUG", None)
    env["OMP_NUM_THREADS"] = "1"  # see _one_torch_thread
    env["HF_HUB_OFFLINE"] = "1"  # belt and braces: --model demo never needs the hub
    return env


def test_console_script_end_to_end(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([_console_script(), "attend", str(CHELSEA), "--model", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (png,) = pngs(out)
    assert png.name == "chelsea__demo__cls_L5_hmean.png"
    with Image.open(png) as im:  # the 451x300 overlay, framed by a title strip above and a colour bar below
        assert im.format == "PNG" and im.size[0] == 451 and im.size[1] > 300
    names = top5_lines(proc.stdout)[str(CHELSEA)]
    assert len(names) == 5 and set(names) <= set(CIFAR10)


def test_console_script_bad_input_is_one_line(tmp_path):
    bad = _truncated_jpeg(tmp_path)
    proc = subprocess.run([_console_script(), "attend", str(bad), "--model", "demo", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_subprocess_env())
    assert proc.returncode == 3
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vitlens: error:") and "truncated" in lines[0] and str(bad) in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
