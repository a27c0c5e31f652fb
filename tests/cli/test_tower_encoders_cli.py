"""The CLI on a multimodal tower's encoder (``*_enc``, issue #11 a): it returns tokens for a
language model, not class logits, so ``attend`` refuses in one line, ``export`` leaves the
logits out (``inspect`` says why) and refuses them when asked for, ``distance`` runs."""
from __future__ import annotations

import pytest
import timm
import torch

from vitlens.capture.adapters.gemma4_vit import Gemma4VitEncoderAdapter
from vitlens.capture.adapters.vit_towers import VitTowerEncoderAdapter

from .helpers import assert_one_line_error, run

RANDOM = "vitlens: warning: random weights"


def without_random_weights_warning(result):
    """The result with its stderr minus the (expected) random-weights warning line."""
    kept = "\n".join(line for line in result.stderr.splitlines() if not line.startswith(RANDOM))
    assert kept != result.stderr, "the random-weights warning was expected"
    result.stderr_bytes = kept.encode()
    return result

REASON = "returns tokens for a language model, not class logits"


@pytest.fixture
def tiny_encoders(monkeypatch):
    """``--model qwen3_vit_88m_enc --no-pretrained`` builds the tiny configuration (the full
    one runs 2,304 tokens through 12 blocks)."""
    real = timm.create_model
    tiny = dict(VitTowerEncoderAdapter.test_models + Gemma4VitEncoderAdapter.test_models[:1])
    tiny["qwen3_vit_88m"] = dict(img_size=64, depth=2, embed_dim=64, num_heads=4)  # the classifier, no CLS

    def create(name, *args, **kwargs):
        torch.manual_seed(0)
        return real(name, *args, **{**kwargs, **tiny.get(name, {})})

    monkeypatch.setattr(timm, "create_model", create)


@pytest.fixture
def two_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = torch.Generator().manual_seed(0)
    for i in range(2):
        arr = (torch.rand(96, 96, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def test_cli_attend_refuses_an_encoder_in_one_line(tiny_encoders, two_images, tmp_path):
    for method in ("cls", "rollout"):
        result = run("attend", two_images / "img0.png", "--model", "qwen3_vit_88m_enc", "--no-pretrained",
                     "--method", method, "--out", tmp_path / "maps")
        assert_one_line_error(without_random_weights_warning(result), REASON, "vitlens attend prints predictions",
                              "vitlens export")
    assert not list(tmp_path.glob("maps/*.png"))


def test_cli_attend_cls_on_a_model_without_cls_token_says_to_use_rollout(tiny_encoders, two_images, tmp_path):
    """Before: the library's hint `use vitlens.rollout(cache)` (a Python call) reached the command line."""
    result = run("attend", two_images / "img0.png", "--model", "qwen3_vit_88m", "--no-pretrained",
                 "--out", tmp_path / "maps")
    line = assert_one_line_error(without_random_weights_warning(result), "qwen3_vit_88m has no CLS token",
                                 "--method rollout")
    assert "vitlens.rollout" not in line
    ok = run("attend", two_images / "img0.png", "--model", "qwen3_vit_88m", "--no-pretrained", "--method", "rollout",
             "--out", tmp_path / "maps")
    assert ok.exit_code == 0, ok.stderr
    assert [p.name for p in (tmp_path / "maps").glob("*.png")] == ["img0__qwen3_vit_88m__rollout_hmean.png"]


def test_cli_export_leaves_logits_out_and_inspect_says_why(tiny_encoders, two_images, tmp_path):
    out = tmp_path / "enc.h5"
    result = run("export", two_images, out, "--model", "gemma4_vit_167m_enc", "--no-pretrained", "--workers", "0",
                 "--quiet")
    assert result.exit_code == 0, result.stderr
    shown = run("inspect", out)
    assert shown.exit_code == 0, shown.stderr
    assert "analyses: rollout, distance" in shown.stdout
    assert f"logits omitted: the model {REASON}" in shown.stdout
    assert "cls_attention omitted: the model has no CLS token" in shown.stdout
    from vitlens.export.hdf5 import read

    with read(out) as f:
        assert "logits" not in f and f["rollout"].shape == (2, 3, 6)
        assert f.attrs["logits_omitted"].endswith("not class logits")
    refused = run("export", two_images, tmp_path / "with_logits.h5", "--model", "gemma4_vit_167m_enc",
                  "--no-pretrained", "--workers", "0", "--quiet", "--analyses", "logits,rollout")
    line = assert_one_line_error(without_random_weights_warning(refused), "'logits' cannot be exported", REASON, "--analyses")
    assert "`" not in line


def test_cli_distance_runs_on_an_encoder(tiny_encoders, two_images):
    result = run("distance", two_images, "--model", "deepseek_vit_412m_enc", "--no-pretrained", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "2 image(s) ok, 0 failed" in result.stdout and "prefix tokens: none" in result.stdout
