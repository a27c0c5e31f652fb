"""Issue #14: work is never thrown away and bad options fail before any model runs.

- every output path (--plot, --csv, --out, --overlays, OUTPUT.h5) is checked before the model loads;
- a write that still fails at the end leaves the results on stdout, and the error says so;
- --layer / --head / --layers / --heads are checked against the architecture before its weights load;
- one exit status (3) for unreadable inputs, in every command;
- error lines carry no "(ValueError)" suffix and name the user's file, never ``out.h5.lock``;
- --max-image-pixels, the tiny-input warning, attend's folders/lists/globs, random-weight notes,
  and shape-bias's --checkpoint MODEL=PATH.

The tests run as root in CI, where permission bits do not stop writes, so an unwritable
location is a path below a regular file (and /proc where it exists).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import vitlens
import vitlens.models

from .helpers import assert_one_line_error, run, stderr_lines

REPO = Path(__file__).resolve().parents[2]
CHELSEA = REPO / "examples" / "chelsea.jpg"
STIMULI = REPO / "tests" / "data" / "cue-conflict"


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails the test: the error must come before it."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")
    monkeypatch.setattr(vitlens.models, "load_model", refuse)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir()
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / c / "0.png")
    return root


@pytest.fixture(scope="module")
def with_broken(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    (root / "cat").mkdir()
    Image.open(CHELSEA).convert("RGB").resize((40, 36)).save(root / "cat" / "good.png")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A 'folder' that is a regular file: nothing can be written below it, even by root."""
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    return f


# ------------------------------------------------------------- outputs checked first
@pytest.mark.parametrize("cmd", [
    ["evaluate", "{images}", "--model", "demo", "--plot", "{blocked}/e.png"],
    ["distance", "{images}", "--model", "demo", "--plot", "{blocked}/d.pdf"],
    ["importance", "{images}", "--model", "demo", "--plot", "{blocked}/i.svg"],
    ["shape-bias", "{stimuli}", "--model", "demo", "--csv", "{blocked}/s.csv"],
    ["shape-bias", "{stimuli}", "--model", "demo", "--plot", "{blocked}/s.png"],
    ["export", "{images}", "{blocked}/out.h5", "--model", "demo"],
    ["export", "{images}", "{tmp}/out.h5", "--model", "demo", "--overlays", "{blocked}/ov"],
    ["attend", str(CHELSEA), "--model", "demo", "--out", "{blocked}/attend"],
])
def test_unwritable_output_fails_before_the_model_loads(cmd, images, blocked, tmp_path, no_model):
    args = [a.format(images=images, blocked=blocked, stimuli=STIMULI, tmp=tmp_path) for a in cmd]
    r = run(*args)
    line = assert_one_line_error(r, "cannot write", str(blocked), "is a file, not a folder")
    assert "lock" not in line and "creating" not in line
    assert r.stdout == ""


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a folder nobody can create files in)")
def test_read_only_folder_fails_before_the_model_loads(images, no_model):
    r = run("evaluate", images, "--model", "demo", "--plot", "/proc/e.png")
    assert_one_line_error(r, "cannot write --plot '/proc/e.png'", "cannot create files in folder '/proc'")


def test_existing_export_output_is_refused_before_the_model_loads(images, tmp_path, no_model):
    out = tmp_path / "x.h5"
    out.write_bytes(b"")
    assert_one_line_error(run("export", images, out, "--model", "demo"), "already exists", "--overwrite")


@pytest.mark.parametrize("command,option,extra", [
    ("evaluate", "--plot", ["--methods", "random", "--metrics", "deletion", "--steps", "2"]),
    ("distance", "--plot", []),
    ("importance", "--plot", ["--method", "random", "--ratios", "0.5,1"]),
])
def test_a_late_write_failure_leaves_the_results_on_stdout(command, option, extra, images, tmp_path, monkeypatch):
    import vitlens.export.figures as figures

    def disk_full(fig, path, dpi=150):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(figures, "save_figure", disk_full)
    dest = tmp_path / "late.png"
    r = run(command, images, "--model", "demo", option, dest, "--quiet", "--json", *extra)
    assert_one_line_error(r, f"cannot write {option} '{dest}'", "No space left on device",
                          "the results are printed above")
    data = json.loads(r.stdout)          # the whole result is there
    assert data


def test_a_late_csv_failure_leaves_shape_bias_results_on_stdout(tmp_path, monkeypatch):
    import vitlens.cli.shape_bias as sb

    def fail(*a, **k):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(sb, "_write_csv", fail)
    dest = tmp_path / "d.csv"
    r = run("shape-bias", STIMULI, "--model", "demo", "--csv", dest, "--no-texture-attention")
    assert r.exit_code == 1
    last = stderr_lines(r)[-1]   # after the warning about the stimuli folder's ATTRIBUTION.md
    assert last == f"vitlens: error: cannot write --csv '{dest}': Input/output error; the results are printed " \
                   f"above (stdout)"
    assert "shape bias" in r.stdout


# ------------------------------------------------------ layers and heads before load
@pytest.mark.parametrize("args,reasons", [
    (["attend", str(CHELSEA), "--layer", "30"], ["--layer: layer 30 is out of range", "6-layer model (demo)"]),
    (["attend", str(CHELSEA), "--layer", "-7"], ["--layer: layer -7 is out of range"]),
    (["attend", str(CHELSEA), "--head", "4"], ["--head: head 4 is out of range", "4 heads"]),
    (["attend", str(CHELSEA), "--method", "rollout", "--head", "-5"], ["--head: head -5 is out of range"]),
    (["attend", str(CHELSEA), "--method", "gradcam", "--layer", "6"], ["--layer: layer 6 is out of range",
                                                                       "6-block model"]),
    (["distance", "{images}", "--layers", "0,17"], ["--layers: layer 17 is out of range"]),
    (["export", "{images}", "{tmp}/o.h5", "--full", "--layers", "9"], ["--layers: layer 9 is out of range"]),
    (["export", "{images}", "{tmp}/o.h5", "--full", "--heads", "0,4"], ["--heads: head 4 is out of range"]),
])
def test_layer_and_head_are_checked_before_loading(args, reasons, images, tmp_path, no_model):
    args = [a.format(images=images, tmp=tmp_path) for a in args]
    r = run(*args, "--model", "demo", "--out" if args[0] == "attend" else "--quiet",
            *([tmp_path / "o"] if args[0] == "attend" else []))
    assert_one_line_error(r, *reasons)


def test_layer_check_uses_the_architecture_not_the_demo(no_model, tmp_path):
    """A timm name is checked against its own depth (vit_tiny: 12 layers, 3 heads) without weights."""
    r = run("attend", CHELSEA, "--model", "vit_tiny_patch16_224", "--layer", "12", "--out", tmp_path)
    assert_one_line_error(r, "layer 12 is out of range", "12-layer model (vit_tiny_patch16_224)")
    r = run("attend", CHELSEA, "--model", "vit_tiny_patch16_224", "--head", "3", "--out", tmp_path)
    assert_one_line_error(r, "head 3 is out of range", "3 heads")


def test_geometry_matches_the_loaded_model():
    """The weightless skeleton the checks use has the loaded model's layers and heads."""
    from vitlens.capture import adapter_for
    from vitlens.cli.common import Geometry

    for name in ("demo", "swin_tiny_patch4_window7_224"):
        geo = Geometry(name)
        model = vitlens.load_model(name, pretrained=False).model
        a = adapter_for(model)
        assert geo.num_layers == len(a.attention_modules())
        assert geo.heads == [int(a.heads_of(i)) for i in range(geo.num_layers)]
    assert Geometry("swin_tiny_patch4_window7_224").gradcam_blocks == 4  # stages


# ------------------------------------------------------------------ exit status 3
@pytest.mark.parametrize("cmd", [
    ["attend", "{root}/cat/good.png", "{root}/cat/broken.png", "--out", "{tmp}/a"],
    ["attend", "{root}", "--out", "{tmp}/a"],
    ["export", "{root}", "{tmp}/e.h5", "--workers", "0"],
    ["evaluate", "{root}", "--methods", "random", "--metrics", "deletion", "--steps", "2"],
    ["distance", "{root}"],
    ["importance", "{root}", "--method", "random", "--ratios", "1"],
])
def test_unreadable_inputs_exit_3_in_every_command(cmd, with_broken, tmp_path):
    args = [a.format(root=with_broken, tmp=tmp_path) for a in cmd]
    r = run(*args, "--model", "demo")
    assert r.exit_code == 3, (r.stdout, r.stderr)
    assert ("1 failed" if cmd[0] == "export" else "broken.png") in r.stderr  # export: the file lists them
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_unreadable_stimulus_exits_3_in_shape_bias(tmp_path):
    import shutil

    root = tmp_path / "stimuli"
    shutil.copytree(STIMULI, root)
    first = sorted((root / "cat").glob("*.png"))[0]
    first.write_bytes(b"\x89PNG\r\n\x1a\n cut")
    r = run("shape-bias", root, "--model", "demo", "--no-texture-attention")
    assert r.exit_code == 3, r.stderr
    assert first.name in r.stderr and "shape bias" in r.stdout


# ------------------------------------------------------------------------- errors
def test_error_lines_have_no_exception_class_suffix():
    from vitlens.cli.common import one_line

    assert one_line(ValueError("bad value")) == "bad value"
    assert one_line(KeyError("no dataset 'x'")) == "no dataset 'x'"
    assert one_line(PermissionError(13, "Permission denied", "/x/out.png")) == \
        "cannot access '/x/out.png': Permission denied"


def test_writer_errors_name_the_users_file_not_the_lock(tmp_path):
    from vitlens.errors import VitlensError
    from vitlens.export.hdf5 import Column, ExportWriter

    f = tmp_path / "file"
    f.write_text("x")
    target = f / "out.h5"
    with pytest.raises(VitlensError) as info:
        ExportWriter(target, [Column("images/ok", (), "bool", 1)], {}, {}, 1)
    msg = str(info.value)
    assert f"cannot write '{target}'" in msg and ".lock" not in msg


# ------------------------------------------------------------- inputs of attend
def test_attend_takes_a_folder_a_list_and_a_glob(tmp_path, images):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{images}/cat/0.png\n")
    out = tmp_path / "o"
    r = run("attend", images, lst, f"{images}/d*/*.png", "--model", "demo", "--out", out)
    assert r.exit_code == 0, r.stderr
    read = [line.split(":")[0] for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert read == [f"{images}/cat/0.png", f"{images}/dog/0.png", f"{images}/cat/0.png", f"{images}/dog/0.png"]
    assert len(list(out.glob("*.png"))) == 4


def test_attend_empty_folder_is_reported_as_unreadable(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("attend", tmp_path / "empty", "--model", "demo", "--out", tmp_path / "o")
    assert r.exit_code == 3 and "no image files below folder" in r.stderr


def test_tiny_input_warns(tmp_path):
    p = tmp_path / "tiny.png"
    Image.open(CHELSEA).convert("RGB").resize((20, 16)).save(p)
    r = run("attend", p, "--model", "demo", "--out", tmp_path / "o")
    assert r.exit_code == 0
    assert stderr_lines(r) == [f"vitlens: warning: {p} is 20x16 pixels, smaller than the model's 32x32 input; "
                               f"it is upsampled, so predictions and maps may be unreliable"]
    r = run("attend", CHELSEA, "--model", "demo", "--out", tmp_path / "o2")
    assert stderr_lines(r) == []


@pytest.mark.parametrize("command", ["export", "evaluate", "distance", "importance"])
def test_tiny_inputs_warn_once_in_batch_commands(tmp_path, command):
    """Batch commands warn once, with a count and the first names, not once per image."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    big = Image.open(CHELSEA).convert("RGB")
    for i, size in enumerate([(20, 16), (64, 48), (31, 40), (40, 40), (12, 12), (8, 30)]):
        big.resize(size).save(folder / f"{i}.png")
    args = {"export": [tmp_path / "o.h5", "--analyses", "logits,cls"], "evaluate": ["--methods", "cls"],
            "distance": [], "importance": ["--ratios", "0.5,1"]}[command]
    r = run(command, folder, *args, "--model", "demo")
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in stderr_lines(r) if "smaller than the model's" in line]
    assert len(warnings) == 1, r.stderr
    if command == "export":
        assert warnings[0].startswith("vitlens: warning: 4 of the 6 new image(s) are smaller than the model's 32x32")
    else:
        assert warnings[0].startswith("vitlens: warning: 4 of 6 image(s) are smaller than the model's 32x32 input: "
                                      "0.png (20x16), 2.png (31x40), 4.png (12x12) and 1 more; they are upsampled")


def test_batch_smaller_than_input_uses_the_decoded_size(tmp_path):
    from vitlens.data import image_batches

    for i, size in enumerate([(32, 32), (31, 64), (64, 31), (100, 100)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
    (tmp_path / "4.png").write_bytes(b"not an image")
    cfg = vitlens.load_model("demo").data_config
    (b,) = image_batches(sorted(tmp_path.glob("*.png")), cfg, batch_size=8)
    assert b.sizes.tolist() == [[32, 32], [31, 64], [64, 31], [100, 100], [0, 0]]
    assert b.smaller_than_input(cfg) == [1, 2]          # the failed item is not "small"
    assert b.smaller_than_input({**cfg, "input_size": (3, 101, 101)}) == [0, 1, 2, 3]


def test_max_image_pixels_option_and_env(tmp_path, monkeypatch):
    from vitlens.data import MAX_PIXELS_ENV

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "")
    r = run("attend", CHELSEA, "--model", "demo", "--out", tmp_path / "a")
    assert r.exit_code == 3
    assert "--max-image-pixels N" in r.stderr and MAX_PIXELS_ENV in r.stderr
    r = run("attend", CHELSEA, "--model", "demo", "--out", tmp_path / "b", "--max-image-pixels", "200000")
    assert r.exit_code == 0, r.stderr
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "none")
    r = run("attend", CHELSEA, "--model", "demo", "--out", tmp_path / "c")
    assert r.exit_code == 0, r.stderr
    r = run("attend", CHELSEA, "--model", "demo", "--max-image-pixels", "-3")
    assert r.exit_code == 2 and "--max-image-pixels" in r.stderr


# ------------------------------------------------------------------ random weights
def test_random_weights_are_reported(tmp_path, images):
    r = run("distance", images, "--model", "vit_tiny_patch16_224", "--no-pretrained", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert "random weights" in r.stderr
    assert "random weights" in json.loads(r.stdout)["warning"]
    out = tmp_path / "r.h5"
    r = run("export", images, out, "--model", "vit_tiny_patch16_224", "--no-pretrained", "--workers", "0",
            "--analyses", "logits", "--quiet")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert bool(f.attrs["random_weights"]) is True
    assert "RANDOM WEIGHTS" in run("inspect", out).stdout
    r = run("distance", images, "--model", "demo", "--json", "--quiet")
    assert "random" not in r.stderr and "warning" not in json.loads(r.stdout)


def test_shape_bias_csv_marks_random_weights(tmp_path):
    out = tmp_path / "s.csv"
    r = run("shape-bias", STIMULI, "--model", "demo", "--csv", out, "--no-texture-attention")
    assert r.exit_code == 0, r.stderr
    assert {row.split(",")[-1] for row in out.read_text().splitlines()[1:]} == {"trained"}


# ------------------------------------------------------------ --checkpoint MODEL=PATH
def test_checkpoint_for_some_models_only(tmp_path):
    from vitlens.cli.shape_bias import _pair_checkpoints
    from vitlens.errors import VitlensError

    names = ["demo", "vit_tiny_patch16_224", "resnet50"]
    assert _pair_checkpoints(names, []) == [None, None, None]
    assert _pair_checkpoints(names, ["vit_tiny_patch16_224=ft.pt"]) == [None, "ft.pt", None]
    assert _pair_checkpoints(names, ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(VitlensError, match="MODEL=PATH"):
        _pair_checkpoints(names, ["a"])
    with pytest.raises(VitlensError, match="names no --model"):
        _pair_checkpoints(names, ["demo=x.pt", "other.pt"])


def test_shape_bias_checkpoint_model_equals_path(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "demo_copy.safetensors"
    save_file({k: v.contiguous() for k, v in vitlens.load_model("demo").model.state_dict().items()}, ckpt)
    r = run("shape-bias", STIMULI, "--model", "demo", "--model", "vit_tiny_patch16_224", "--no-pretrained",
            "--checkpoint", f"demo={ckpt}", "--no-texture-attention", "--json")
    # vit_tiny has no checkpoint and random weights: it is still measured, and flagged
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert [d["weights"] for d in data] == ["trained", "random"]
    assert "demo_copy.safetensors" in data[0]["model"]


# ------------------------------------------------------------------ overlays (6, 7)
def test_overlay_names_never_collide_across_models_methods_and_settings():
    from vitlens.export.overlay import overlay_name

    cases = []
    for model in ("demo", "vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_base_patch16_224+ft"):
        cases += [dict(model=model, method="cls", layer=layer, head=head) for layer in (0, 11) for head in
                  ("mean", "max", 0, 1)]
        cases += [dict(model=model, method="rollout", head="mean", settings=s) for s in ({}, {"discard": 0.9})]
        cases += [dict(model=model, method=m, target=t) for m in ("chefer", "grad-rollout", "ig") for t in
                  ("cat", "dog")]
        cases += [dict(model=model, method="gradcam", layer=3, target="cat"), dict(model=model, method="random"),
                  dict(model=model, method="cls", layer=11, suffix="heads")]
    names = [overlay_name("photos/chelsea.jpg", **c) for c in cases]
    assert len(set(names)) == len(names)
    assert all(n.startswith("chelsea__") and n.endswith(".png") and "/" not in n for n in names)
    assert overlay_name("a/chelsea.jpg", "demo", "rollout", head="mean", settings={"discard": 0.9}) == \
        "chelsea__demo__rollout_hmean_discard0.9.png"


def test_attend_and_export_use_one_naming_scheme(tmp_path):
    from vitlens.export.overlay import overlay_name

    src = tmp_path / "in"
    src.mkdir()
    Image.open(CHELSEA).convert("RGB").resize((64, 48)).save(src / "cat.png")
    r = run("attend", src / "cat.png", "--model", "demo", "--method", "rollout", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.stderr
    r = run("export", src, tmp_path / "e.h5", "--model", "demo", "--workers", "0", "--analyses", "rollout",
            "--overlays", tmp_path / "b", "--quiet")
    assert r.exit_code == 0, r.stderr
    expected = overlay_name("cat.png", "demo", "rollout", head="mean")
    assert [p.name for p in (tmp_path / "a").glob("*.png")] == [expected]
    assert [p.name for p in (tmp_path / "b").glob("*.png")] == [expected]


def test_attend_never_overwrites_silently(tmp_path):
    out = tmp_path / "o"
    for _ in range(2):
        assert run("attend", CHELSEA, "--model", "demo", "--out", out).exit_code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["chelsea__demo__cls_L5_hmean-2.png",
                                                         "chelsea__demo__cls_L5_hmean.png"]
    r = run("attend", CHELSEA, "--model", "demo", "--out", out, "--overwrite")
    assert r.exit_code == 0 and f"wrote {out / 'chelsea__demo__cls_L5_hmean.png'}" in r.stdout
    assert len(list(out.glob("*.png"))) == 2
    # two models never share a file either
    r = run("attend", CHELSEA, "--model", "vit_tiny_patch16_224", "--no-pretrained", "--out", out, "--no-annotate")
    assert (out / "chelsea__vit_tiny_patch16_224__cls_L11_hmean.png").exists()


def test_annotated_overlay_frames_the_bare_one(tmp_path):
    """The title strip and colour bar are added around the overlay: the photo part is
    pixel-identical to --no-annotate, and the frame adds rows only."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("attend", CHELSEA, "--model", "demo", "--out", a).exit_code == 0
    assert run("attend", CHELSEA, "--model", "demo", "--out", b, "--no-annotate").exit_code == 0
    framed = np.asarray(Image.open(next(a.glob("*.png"))))
    bare = np.asarray(Image.open(next(b.glob("*.png"))))
    assert bare.shape == (300, 451, 3) and framed.shape[1] == 451 and framed.shape[0] > 300
    offsets = [y for y in range(framed.shape[0] - 300 + 1) if np.array_equal(framed[y:y + 300], bare)]
    assert len(offsets) == 1 and offsets[0] > 0         # a title strip above, the bar below
    title, below = framed[:offsets[0]], framed[offsets[0] + 300:]
    assert (title < 128).any() and (below < 128).any()  # text on both strips


def test_contours_mark_the_hot_spot_on_a_saturated_region():
    """A hot spot on a saturated yellow patch: with the inferno colormap the blend barely
    changes it; the contour draws black and white pixels around it."""
    from vitlens.export.overlay import overlay

    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (255, 255, 0)                       # saturated yellow photo
    m = np.zeros((8, 8))
    m[3:5, 3:5] = 1.0
    plain = overlay(img, m, interpolation="nearest")
    framed = overlay(img, m, interpolation="nearest", contours=(0.75,))
    hot = plain[24:40, 24:40].astype(int)
    assert np.abs(hot[..., :2] - 255).max() <= 2     # yellow on yellow: red and green as in the photo
    changed = np.any(framed != plain, axis=-1)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 40 and 18 <= ys.min() and ys.max() <= 45 and 18 <= xs.min() and xs.max() <= 45
    assert (framed[changed] < 40).all(axis=-1).any() and (framed[changed] > 215).all(axis=-1).any()
    scaled = overlay(img, m, interpolation="nearest", alpha_by_value=True)
    assert np.array_equal(scaled[0:8, 0:8], img[0:8, 0:8])   # zero value: the photo untouched


def test_head_grid_titles_do_not_touch_the_images_above():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vitlens.export.figures import head_grid

    img = np.asarray(Image.open(CHELSEA).convert("RGB"))          # 451x300: wide panels
    fig = head_grid(np.random.default_rng(0).random((4, 8, 8)), image=img, fused=np.ones((8, 8)),
                    title="chelsea.jpg: demo | CLS attention, layer 5, every head")
    FigureCanvasAgg(fig).draw()
    r = fig.canvas.get_renderer()
    axes = fig.axes
    top_row_bottom = min(ax.get_window_extent(r).y0 for ax in axes[:3])
    for ax in axes[3:]:
        assert ax.title.get_window_extent(r).y1 < top_row_bottom - 2, ax.title.get_text()
    suptitle = fig._suptitle.get_window_extent(r)
    assert all(suptitle.y0 > ax.title.get_window_extent(r).y1 for ax in axes[:3])
