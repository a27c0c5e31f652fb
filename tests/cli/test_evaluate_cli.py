"""``vitlens evaluate`` (cli/evaluate.py), in-process with CliRunner, on the demo model and generated images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitlens

from .helpers import assert_one_line_error, run, stderr_lines


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 2, bad: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if bad:
        (root / classes[0] / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("evalimgs"))


ARGS = ("--model", "demo", "--methods", "rollout,random", "--metrics", "deletion,positive,negative_drop",
        "--steps", "4", "--quiet")


def test_listed_in_help():
    assert "evaluate" in run("--help").stdout
    out = run("evaluate", "--help").stdout
    for opt in ("--model", "--labels", "--methods", "--metrics", "--limit", "--json", "--plot", "--quiet", "--steps"):
        assert opt in out


def test_json_matches_the_api_on_the_same_images(folder):
    result = run("evaluate", folder, *ARGS, "--labels", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_images"] == 4 and data["skipped"] == []
    assert set(data["values"]) == {"rollout", "random"}
    assert set(data["values"]["rollout"]) == {"deletion", "positive", "negative_drop"}
    assert data["params"]["reference"] == "labels"
    # the same evaluation through the Python API
    model, cfg = vitlens.load_model("demo", device="cpu")
    t = vitlens.make_transform(cfg)
    paths = sorted(folder.rglob("*.png"))
    x = torch.stack([t(Image.open(p).convert("RGB")) for p in paths])
    names = vitlens.class_names(model)
    labels = torch.tensor([names.index(p.parent.name) for p in paths])
    api = vitlens.evaluate(model, x, labels, methods=["rollout", "random"],
                           metrics=["deletion", "positive", "negative_drop"], steps=4, batch_size=32)
    for m in ("rollout", "random"):
        for k, v in api[m].items():
            assert data["values"][m][k] == pytest.approx(v, abs=1e-6), (m, k)
    assert len(data["curves"]["rollout"]["deletion"]["x"]) == 5


def test_text_output_limit_plot_and_skipped_file(tmp_path):
    root = make_folder(tmp_path / "imgs", bad=True)
    plot = tmp_path / "curves.png"
    result = run("evaluate", root, *ARGS, "--limit", "3", "--plot", plot)
    assert result.exit_code == 3, result.output  # an unreadable file: the documented status
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("3 images (1 skipped); target: predicted class")
    assert lines[1].startswith("| method | deletion ↓ | positive ↓ | negative_drop ↑ |")
    assert lines[3].startswith("| rollout |") and lines[4].startswith("| random |")
    err = stderr_lines(result)
    assert any("skipped cat/broken.jpg" in e for e in err) and err[-1] == f"wrote {plot}"
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("extra, reasons", [
    (("--methods", "rolout"), ("unknown explanation method 'rolout'", "rollout")),
    (("--metrics", "deletoin"), ("unknown metric 'deletoin'", "did you mean 'deletion'")),
    (("--plot", "out.txt"), ("--plot 'out.txt'", ".pdf")),
    (("--target", "label"), ("--target label needs --labels",)),
    (("--baseline", "black"), ("Invalid value for '--baseline'",)),
])
def test_bad_options_are_one_line_errors(folder, extra, reasons):
    result = run("evaluate", folder, "--model", "demo", "--quiet", *extra)
    if "Invalid value" in reasons[0]:          # click's own usage error (exit 2)
        assert result.exit_code == 2 and reasons[0] in result.stderr
        return
    assert_one_line_error(result, *reasons)


def test_folder_that_is_not_a_class_is_a_one_line_error(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("cat", "kitten"), per_class=1)
    result = run("evaluate", root, "--model", "demo", "--labels", "--quiet")
    assert_one_line_error(result, "'kitten'", "not classes of the model", "airplane")


def test_missing_input_is_a_one_line_error(tmp_path):
    assert_one_line_error(run("evaluate", tmp_path / "nope", "--model", "demo"), "no such file or folder")
