"""``vitlens importance`` (cli/importance.py), in-process with CliRunner, on the demo model and generated images."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import vitlens

from .helpers import assert_one_line_error, run, stderr_lines
from .test_evaluate_cli import make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("impimgs"))


def test_listed_in_help():
    assert "importance" in run("--help").stdout
    out = run("importance", "--help").stdout
    for opt in ("--model", "--method", "--labels", "--ratios", "--json", "--plot", "--quiet", "--limit"):
        assert opt in out


def test_json_matches_the_api(folder):
    result = run("importance", folder, "--model", "demo", "--labels", "--ratios", "0.25,0.5,1", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ratios"] == [0.25, 0.5, 1.0] and set(data["accuracy"]) == {"rollout", "random"}
    assert data["n_images"] == 4 and data["reference"] == "labels"
    assert [im["path"] for im in data["images"]] == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert all(len(im["scores"]) == 64 for im in data["images"])
    model, cfg = vitlens.load_model("demo", device="cpu")
    t = vitlens.make_transform(cfg)
    x = torch.stack([t(Image.open(folder / p["path"]).convert("RGB")) for p in data["images"]])
    want = vitlens.token_importance(model, x, method="rollout")
    assert torch.allclose(torch.tensor([im["scores"] for im in data["images"]]), want, atol=1e-6)
    names = vitlens.class_names(model)
    labels = torch.tensor([names.index(p["path"].split("/")[0]) for p in data["images"]])
    with torch.no_grad():
        acc = 100 * float((model(x).argmax(-1) == labels).float().mean())
    assert data["accuracy"]["rollout"][-1] == pytest.approx(acc)


def test_text_output_with_limit_and_plot(folder, tmp_path):
    plot = tmp_path / "keep.pdf"
    result = run("importance", folder, "--model", "demo", "--method", "received", "--limit", "3",
                 "--ratios", "0.5,1", "--plot", plot, "--quiet")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("3 images (0 skipped); top-1 accuracy (%) against the all-token prediction")
    assert lines[1].split() == ["keep_ratio", "received", "random"]
    assert lines[-1].split()[:2] == ["1.00", "100.00"]
    assert plot.stat().st_size > 1000 and stderr_lines(result) == [f"wrote {plot}"]


def test_bad_inputs_are_one_line_errors(folder):
    assert_one_line_error(run("importance", folder, "--model", "demo", "--ratios", "half"), "--ratios")
    assert_one_line_error(run("importance", folder, "--model", "demo", "--ratios", "0,1"),
                          "ratios must be fractions in (0, 1]")
    assert_one_line_error(run("importance", folder, "--model", "demo", "--method", "rolout"),
                          "unknown explanation method 'rolout'")


def test_unsupported_model_is_a_one_line_error(folder):
    result = run("importance", folder, "--model", "resnet18", "--no-pretrained", "--quiet")
    assert_one_line_error(result, "timm VisionTransformer", "ResNet")
