"""Tests for ``vitlens shape-bias`` (cli/shape_bias.py), in-process with CliRunner.

Uses the bundled 32x32 demo ViT (CIFAR-10 mapping) on the 32-image cue-conflict subset in
tests/data/cue-conflict; nothing touches the network.
"""
from __future__ import annotations

import csv
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch

import vitlens

from .helpers import assert_one_line_error, run, stderr_lines

STIMULI = Path(__file__).resolve().parents[1] / "data" / "cue-conflict"


@pytest.fixture(scope="module")
def api_result():
    return vitlens.shape_bias(vitlens.load_model("demo"), STIMULI)


@pytest.fixture(scope="module")
def json_run():
    result = run("shape-bias", STIMULI, "--model", "demo", "--json")
    assert result.exit_code == 0, result.output
    return result


def test_listed_in_help():
    result = run("--help")
    assert "shape-bias" in result.stdout
    result = run("shape-bias", "--help")
    for opt in ("--model", "--checkpoint", "--pretrained", "--no-pretrained", "--device", "--mapping", "--json",
                "--csv", "--plot"):
        assert opt in result.stdout


def test_text_output(api_result):
    result = run("shape-bias", STIMULI, "--model", "demo")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines == [api_result.summary()]
    assert lines[0].startswith("demo: shape bias ")
    assert f"shape {api_result.n_shape}, texture {api_result.n_texture}, other {api_result.n_other}" in lines[0]
    assert "mapping cifar10" in lines[0]
    assert stderr_lines(result) == [
        "vitlens: warning: skipped ATTRIBUTION.md: not an image file (outside the category folders)"]


def test_json_output(json_run, api_result):
    data = json.loads(json_run.stdout)
    assert isinstance(data, dict)
    assert data.pop("weights") == "trained"
    assert data == json.loads(json.dumps(api_result.to_dict()))
    assert data["categories"] == ["airplane", "bird", "boat", "car", "cat", "dog", "truck"]
    assert data["n_images"] == 32 and len(data["decisions"]) == 32


def test_csv_output(tmp_path, api_result):
    out = tmp_path / "sub" / "decisions.csv"
    result = run("shape-bias", STIMULI, "--model", "demo", "--csv", out)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["model", "path", "shape", "texture", "decision", "outcome", "texture_share", "weights"]
    assert len(rows) == 32
    assert [r["path"] for r in rows] == [d.path for d in api_result.decisions]
    assert [r["decision"] for r in rows] == [d.decision or "" for d in api_result.decisions]
    assert sum(r["outcome"] == "shape" for r in rows) == api_result.n_shape
    assert sum(r["outcome"] == "uncovered" for r in rows) == api_result.n_uncovered
    assert all(r["model"] == "demo" for r in rows)


def test_two_models_plot_and_json(tmp_path):
    bundled = resources.files("vitlens.assets") / "demo_vit.safetensors"
    torch.manual_seed(3)
    from safetensors.torch import save_file

    other = vitlens.load_model("demo", checkpoint=None).model
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    ckpt = tmp_path / "noisy.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(ckpt))

    plot = tmp_path / "cmp.pdf"
    csv_out = tmp_path / "d.csv"
    with resources.as_file(bundled) as b:
        result = run("shape-bias", STIMULI, "--model", "demo", "--model", "demo", "--checkpoint", b,
                     "--checkpoint", ckpt, "--plot", plot, "--csv", csv_out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list) and [d["model"] for d in data] == ["demo (demo_vit.safetensors)",
                                                                      "demo (noisy.safetensors)"]
    assert plot.read_bytes()[:4] == b"%PDF" and plot.stat().st_size > 1000
    with open(csv_out, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 64
    # the warning about the skipped file is printed once, not once per model
    assert sum("skipped ATTRIBUTION.md" in line for line in stderr_lines(result)) == 1

    text = run("shape-bias", STIMULI, "--model", "demo", "--model", "demo", "--checkpoint", ckpt,
               "--checkpoint", ckpt, "--no-texture-attention")
    assert text.exit_code == 0, text.output
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 2 and all("CLS attention" not in line for line in lines)


def test_missing_categories_warning(tmp_path):
    for cat in ("cat", "dog", "bear"):
        shutil.copytree(STIMULI / cat, tmp_path / cat)
    result = run("shape-bias", tmp_path, "--model", "demo")
    assert result.exit_code == 0, result.output
    assert stderr_lines(result) == [
        "vitlens: warning: demo: no stimuli for 5 of the mapping's categories (airplane, bird, boat, car, truck); "
        "evaluated the others"]


def test_bad_inputs_are_one_line_errors(tmp_path):
    assert_one_line_error(run("shape-bias", tmp_path / "nope", "--model", "demo"), "does not exist")
    assert_one_line_error(run("shape-bias", tmp_path, "--model", "demo"), "no stimuli found")
    assert_one_line_error(run("shape-bias", STIMULI, "--model", "demo", "--mapping", "imagenet16"),
                          "class index 404", "10 classes")
    assert_one_line_error(run("shape-bias", STIMULI, "--model", "demo", "--mapping", tmp_path / "m.json"),
                          "neither a built-in mapping")
    assert_one_line_error(run("shape-bias", STIMULI, "--model", "demo", "--plot", tmp_path / "p.xyz"), "--plot")
    assert_one_line_error(run("shape-bias", STIMULI, "--model", "demo", "--model", "demo", "--checkpoint",
                              tmp_path / "a.safetensors"), "1 --checkpoint for 2 --model")
    assert_one_line_error(run("shape-bias", STIMULI, "--model", "vit_nope_patch16"), "unknown model")

    bad = tmp_path / "bad"
    shutil.copytree(STIMULI / "cat", bad / "cat")
    (bad / "cat" / "cat1.png").write_bytes((STIMULI / "cat" / "cat1-cat3.png").read_bytes())
    assert_one_line_error(run("shape-bias", bad, "--model", "demo"), "cat1.png", "no texture label")
    (bad / "cat" / "cat1.png").unlink()
    (bad / "kitten").mkdir()
    assert_one_line_error(run("shape-bias", bad, "--model", "demo"), "'kitten' is not a category")
