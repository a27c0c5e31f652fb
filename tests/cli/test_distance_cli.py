"""Tests for ``vitlens distance`` (cli/distance.py), in-process with CliRunner, on the bundled demo
ViT and the example photos; the numbers are checked against a direct numpy reference."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vitlens
import vitlens.data

from .helpers import assert_one_line_error, run, stderr_lines

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three example photos (one in a subfolder) and one corrupt file."""
    root = tmp_path_factory.mktemp("imgs")
    (root / "sub").mkdir()
    shutil.copy(EXAMPLES / "chelsea.jpg", root / "chelsea.jpg")
    shutil.copy(EXAMPLES / "coffee.jpg", root / "coffee.jpg")
    shutil.copy(EXAMPLES / "astronaut.jpg", root / "sub" / "astronaut.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


def reference(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image [N, L, H] distance and entropy from the definition, in float64 numpy."""
    model, cfg = vitlens.load_model("demo")
    x = torch.stack([vitlens.preprocess(vitlens.load_image(p), cfg).tensor for p in paths])
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    gh, gw = model.patch_embed.grid_size
    ph, pw = model.patch_embed.patch_size
    P = model.num_prefix_tokens
    n = gh * gw
    d = np.zeros((n, n))
    for q in range(n):
        for k in range(n):
            d[q, k] = math.hypot((q // gw - k // gw) * ph, (q % gw - k % gw) * pw)
    dist, ent = [], []
    for layer in range(len(model.blocks)):
        a = cache.attention(layer)[:, :, P:, P:].double().numpy()
        w = a / a.sum(-1, keepdims=True)
        dist.append((w * d).sum(-1).mean(-1))
        ent.append((-(w * np.log(w)).sum(-1)).mean(-1))
    return np.stack(dist, 1), np.stack(ent, 1)


@pytest.fixture(scope="module")
def json_run(folder):
    result = run("distance", folder, "--model", "demo", "--json", "--batch-size", "2")
    assert result.exit_code == 3, result.output  # broken.png is unreadable: the documented status
    return result


def test_listed_in_help():
    assert "distance" in run("--help").stdout
    out = run("distance", "--help").stdout
    for opt in ("--model", "--checkpoint", "--device", "--layers", "--json", "--plot", "--batch-size",
                "--limit", "--quiet"):
        assert opt in out


def test_json_schema_and_numbers_match_reference(folder, json_run):
    data = json.loads(json_run.stdout)
    assert data["images"] == {"total": 4, "ok": 3, "failed": 1}
    assert [f["path"] for f in data["failed"]] == ["broken.png"] and data["failed"][0]["error"]
    assert data["params"]["patch_size"] == [4, 4] and data["params"]["prefix_tokens"] == ["cls"]
    good = [folder / "chelsea.jpg", folder / "coffee.jpg", folder / "sub" / "astronaut.jpg"]
    ref_d, ref_e = reference(good)
    for key, ref, unit in (("distance", ref_d, "pixels"), ("entropy", ref_e, "nats")):
        block = data[key]
        assert block["unit"] == unit and block["statistic"] == key
        assert [row["layer"] for row in block["layers"]] == list(range(6))
        for i, row in enumerate(block["layers"]):
            np.testing.assert_allclose(row["heads"]["mean"], ref[:, i].mean(0), rtol=1e-4)
            np.testing.assert_allclose(row["heads"]["std"], ref[:, i].std(0), rtol=1e-3, atol=1e-4)
            assert row["mean"] == pytest.approx(ref[:, i].mean(), rel=1e-4)
            assert row["std"] == pytest.approx(ref[:, i].std(), rel=1e-3, abs=1e-4)
    # the corrupt file is reported once on stderr, the run still succeeds
    lines = stderr_lines(json_run)
    assert len(lines) == 1 and lines[0].startswith("vitlens: warning: skipped broken.png")


def test_table_layers_limit_plot(folder, tmp_path):
    plot = tmp_path / "fig" / "d.svg"
    result = run("distance", folder, "--model", "demo", "--layers", "0,-1", "--limit", "3", "--plot", plot)
    assert result.exit_code == (3 if "broken.png" in [p.name for p in vitlens.data.resolve_inputs(folder).paths[:3]]
                                else 0), result.output
    used = vitlens.data.resolve_inputs(folder).paths[:3]
    good = [p for p in used if p.name != "broken.png"]
    out = result.stdout.splitlines()
    assert out[0].startswith(f"model demo: {len(good)} image(s) ok, {3 - len(good)} failed") and "patch 4x4" in out[0]
    rows = [line.split() for line in out[2:4]]
    assert [r[0] for r in rows] == ["0", "5"] and len(out) == 5
    ref_d, ref_e = reference(good)
    for row, layer in zip(rows, (0, 5)):       # "layer  mean ± std  mean ± std", rounded to 2 / 3 decimals
        assert float(row[1]) == pytest.approx(ref_d[:, layer].mean(), abs=0.006)
        assert float(row[3]) == pytest.approx(ref_d[:, layer].std(), abs=0.006)
        assert float(row[4]) == pytest.approx(ref_e[:, layer].mean(), abs=0.0006)
    assert plot.exists() and plot.stat().st_size > 1000
    assert f"wrote {plot}" in result.stderr


def test_quiet_hides_warnings(folder):
    result = run("distance", folder, "--model", "demo", "--quiet", "--layers", "1")
    assert result.exit_code == 3, result.output
    assert stderr_lines(result) == []
    assert "3 image(s) ok, 1 failed" in result.stdout


@pytest.mark.parametrize("args,reasons", [
    (["/no/such/folder"], ["no such file or folder"]),
    (["{folder}", "--layers", "a,b"], ["--layers"]),
    (["{folder}", "--layers", "17"], ["layer 17 is out of range"]),
    (["{folder}", "--plot", "out.gif"], ["--plot", ".png"]),
    (["{folder}/broken.png"], ["none of the 1 input image(s) could be read", "broken.png"]),
])
def test_bad_input_is_one_line_error(folder, args, reasons):
    args = [a.replace("{folder}", str(folder)) for a in args]
    result = run("distance", *args, "--model", "demo")
    assert_one_line_error(result, *reasons)
