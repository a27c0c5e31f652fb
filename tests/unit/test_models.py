"""Tests for ``vitlens.load_model`` and friends (vitlens/models.py).

Everything is offline and cheap: the bundled 32x32 demo ViT, or timm models built with
``pretrained=False`` (vit_tiny). Checkpoints are written into tmp_path.
"""
from __future__ import annotations

import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import vitlens
from vitlens import models
from vitlens.errors import CheckpointError, VitlensError, WeightsUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHELSEA = REPO_ROOT / "examples" / "chelsea.jpg"

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY = "vit_tiny_patch16_224"



# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny7() -> nn.Module:
    """A randomly initialised vit_tiny with a 7-class head (deterministic)."""
    torch.manual_seed(0)
    return timm.create_model(TINY, pretrained=False, num_classes=7).eval()


@pytest.fixture(scope="module")
def tiny7_sd(tiny7) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in tiny7.state_dict().items()}


@pytest.fixture(scope="module")
def fixed_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(1, 3, 224, 224, generator=g)


def _checkpoint_error(name, path: Path, **kw) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        vitlens.load_model(name, checkpoint=path, device="cpu", **kw)
    assert isinstance(info.value, VitlensError)
    return info.value


class _MarkerPayload:
    """Unpickling this object calls ``open(path, "w")``, creating a marker file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------- demo
def test_demo_returns_model_and_data_config(demo):
    result = demo
    assert isinstance(result, tuple) and len(result) == 2
    model, cfg = result
    assert isinstance(model, nn.Module)
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert tuple(cfg["input_size"]) == (3, 32, 32)
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert all(s > 0 for s in cfg["std"])
    assert cfg["interpolation"] in ("bicubic", "bilinear", "nearest")
    assert 0 < cfg["crop_pct"] <= 1
    assert vitlens.class_names(model) == CIFAR10
    assert model.num_classes == 10
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)
    # the named-tuple fields are the same objects
    assert result.model is model and result.data_config is cfg


def test_module_passes_through(tiny7):
    m = tiny7
    m.train()
    model, cfg = vitlens.load_model(m, device="cpu")
    assert model is m
    assert not model.training
    assert next(model.parameters()).device == torch.device("cpu")
    assert tuple(cfg["input_size"]) == (3, 224, 224)
    for key in ("mean", "std", "interpolation", "crop_pct"):
        assert key in cfg
    # default device on a machine without CUDA is the CPU
    if not torch.cuda.is_available():
        model2, _ = vitlens.load_model(m)
        assert model2 is m and next(model2.parameters()).device.type == "cpu"


def test_load_model_rejects_other_types():
    with pytest.raises(TypeError):
        vitlens.load_model(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- checkpoints
def _write_checkpoint(kind: str, sd: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    if kind == "safetensors":
        from safetensors.torch import save_file

        p = tmp_path / "w.safetensors"
        save_file(sd, str(p))
        return p
    p = tmp_path / "w.pth"
    if kind == "pth":
        torch.save(sd, p)
    elif kind == "wrapped":
        torch.save({"state_dict": sd, "epoch": 3}, p)
    elif kind == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, p)
    elif kind == "wrapped_module_prefix":
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, p)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return p


@pytest.fixture(scope="module")
def tiny7_output(tiny7, fixed_input) -> torch.Tensor:
    with torch.no_grad():
        return tiny7(fixed_input)


@pytest.mark.parametrize("kind", ["safetensors", "pth", "wrapped", "module_prefix"])
def test_checkpoint_round_trip(kind, tiny7_sd, tiny7_output, fixed_input, tmp_path):
    path = _write_checkpoint(kind, tiny7_sd, tmp_path)
    model, cfg = vitlens.load_model(TINY, checkpoint=str(path) if kind == "pth" else path, device="cpu")
    assert not model.training
    assert model.num_classes == 7  # read from the head weights (timm's default is 1000)
    assert model.get_classifier().out_features == 7
    got = model.state_dict()
    assert set(got) == set(tiny7_sd)
    for k, v in tiny7_sd.items():
        assert got[k].shape == v.shape, k
        assert torch.equal(got[k], v), k
    assert tuple(cfg["input_size"]) == (3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(fixed_input), tiny7_output)


def test_read_state_dict_strips_wrappers(tiny7_sd, tmp_path):
    path = _write_checkpoint("wrapped_module_prefix", tiny7_sd, tmp_path)
    sd = models.read_state_dict(path)
    assert set(sd) == set(tiny7_sd)
    assert all(torch.equal(sd[k], tiny7_sd[k]) for k in sd)


# Error paths use a very small timm VisionTransformer passed as a module: building
# vit_tiny costs ~2 s on a busy CPU, and the checks made on the file do not depend on
# the architecture.
def _small_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


@pytest.fixture(scope="module")
def small_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone().contiguous() for k, v in _small_vit().state_dict().items()}


@pytest.fixture(scope="module")
def demo_sd(demo) -> dict[str, torch.Tensor]:
    model, _ = demo
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_demo_checkpoint_round_trip(demo_sd, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v + 0.5 for k, v in demo_sd.items()}  # differs from the bundled weights
    path = tmp_path / "demo.safetensors"
    save_file(sd, str(path))
    model, _ = vitlens.load_model("demo", checkpoint=path, device="cpu")
    got = model.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert vitlens.class_names(model) == CIFAR10


@pytest.mark.parametrize("what", ["module", "custom_object", "object_in_dict"])
def test_pickled_object_checkpoint_is_refused_and_not_executed(what, small_sd, tmp_path):
    marker = tmp_path / "PWNED"
    # sanity: the payload really is live when unpickled by plain pickle
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_MarkerPayload(str(live)))).close()
    assert live.exists()

    path = tmp_path / "evil.pth"
    if what == "module":
        torch.save(nn.Sequential(nn.Linear(2, 2)), path)
    elif what == "custom_object":
        torch.save(_MarkerPayload(str(marker)), path)
    else:
        torch.save({**small_sd, "evil": _MarkerPayload(str(marker))}, path)
    msg = str(_checkpoint_error(_small_vit(), path))
    assert "pickled" in msg
    assert str(path) in msg
    assert "state_dict" in msg
    assert not marker.exists()


def test_checkpoint_of_another_architecture_does_not_fit(tmp_path):
    small = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2)
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    msg = str(_checkpoint_error(TINY, path))
    assert str(path) in msg
    assert "does not fit" in msg and TINY in msg
    # depth 2 vs 12: blocks 2..11 are missing (first few listed, the rest counted)
    assert "missing from the checkpoint: blocks.1" in msg and "more)" in msg
    assert "shape differs" in msg
    assert "blocks.0.attn.qkv.weight (1152, 384) vs model (576, 192)" in msg


def test_checkpoint_with_a_missing_key(small_sd, tmp_path):
    from safetensors.torch import save_file

    sd = dict(small_sd)
    del sd["blocks.0.norm1.weight"]
    path = tmp_path / "missing_key.safetensors"
    save_file(sd, str(path))
    msg = str(_checkpoint_error(_small_vit(), path))
    assert "missing from the checkpoint: blocks.0.norm1.weight" in msg
    assert "not in the model" not in msg and "shape differs" not in msg


def test_checkpoint_with_an_extra_key(small_sd, tmp_path):
    sd = {**small_sd, "extra_head.weight": torch.zeros(3, 3)}
    path = tmp_path / "extra_key.pth"
    torch.save(sd, path)
    msg = str(_checkpoint_error(_small_vit(), path))
    assert "not in the model: extra_head.weight" in msg
    assert "missing" not in msg and "shape differs" not in msg


def test_checkpoint_with_a_reshaped_tensor(small_sd, tmp_path):
    sd = dict(small_sd)
    sd["pos_embed"] = torch.zeros(1, 50, 32)
    path = tmp_path / "shape.pth"
    torch.save(sd, path)
    msg = str(_checkpoint_error(_small_vit(), path))
    assert "shape differs: pos_embed (1, 50, 32) vs model (1, 17, 32)" in msg


def test_demo_weights_do_not_fit_a_smaller_vit(demo_sd, tmp_path):
    path = tmp_path / "demo.pth"
    torch.save(demo_sd, path)
    msg = str(_checkpoint_error(_small_vit(), path))
    assert "not in the model: blocks.2." in msg and "shape differs" in msg
    assert "VisionTransformer" in msg  # a module is named by its class


def test_junk_text_file_named_pth(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_text("this is not a checkpoint\n")
    assert str(path) in str(_checkpoint_error(_small_vit(), path))


@pytest.mark.parametrize("content", [b"<html><body>404 Not Found</body></html>\n", b"cat weights v2\n"])
def test_text_file_named_pth_is_not_called_pickled(content, tmp_path):
    path = tmp_path / "downloaded.pth"
    path.write_bytes(content)  # e.g. an error page saved under the checkpoint's name
    msg = str(_checkpoint_error(_small_vit(), path))
    assert str(path) in msg
    assert "pickled" not in msg


def test_pickled_object_message_is_plain_text(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)
    msg = str(_checkpoint_error(_small_vit(), path))
    assert "pickled" in msg
    assert "\x1b" not in msg


def test_zero_byte_safetensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    msg = str(_checkpoint_error(_small_vit(), path))
    assert str(path) in msg and "safetensors" in msg


def test_zero_byte_pth(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert str(path) in str(_checkpoint_error(_small_vit(), path))


def test_truncated_safetensors(small_sd, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "cut.safetensors"
    save_file(small_sd, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert str(path) in str(_checkpoint_error(_small_vit(), path))


def test_missing_checkpoint_path(tmp_path):
    path = tmp_path / "nope" / "weights.safetensors"
    msg = str(_checkpoint_error(_small_vit(), path))
    assert str(path) in msg and "does not exist" in msg


def test_directory_as_checkpoint(tmp_path):
    assert str(tmp_path) in str(_checkpoint_error(_small_vit(), tmp_path))


@pytest.mark.parametrize("payload", [{"a": 1, "b": [1, 2]}, {}, [torch.zeros(1)], torch.zeros(3)])
def test_non_state_dict_checkpoint_is_refused(payload, tmp_path):
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    msg = str(_checkpoint_error(_small_vit(), path))
    assert str(path) in msg and "state_dict" in msg


# ------------------------------------------------------------------------------ names
def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(VitlensError) as info:
        vitlens.load_model("vit_bse_patch16_224", pretrained=False, device="cpu")
    msg = str(info.value)
    assert "vit_bse_patch16_224" in msg
    assert "vit_base_patch16_224" in msg
    assert not isinstance(info.value, (CheckpointError, WeightsUnavailableError))


def test_offline_pretrained_weights_unavailable(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if hasattr(hf_constants, name):
            monkeypatch.setattr(hf_constants, name, str(hf_home / "hub"))
    calls = []

    def unreachable(timeout: float = 3.0) -> bool:
        calls.append(timeout)
        return False

    monkeypatch.setattr(models, "_hub_reachable", unreachable)
    before = hf_constants.HF_HUB_OFFLINE
    offline_during = []
    real_create = timm.create_model

    def spy_create(*args, **kwargs):
        offline_during.append(hf_constants.HF_HUB_OFFLINE)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy_create)

    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        vitlens.load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", device="cpu")
    elapsed = time.monotonic() - start

    assert elapsed < 20, f"took {elapsed:.1f}s: download retries instead of failing offline?"
    msg = str(info.value)
    assert "vit_tiny_patch16_224.augreg_in21k_ft_in1k" in msg
    assert "`checkpoint=PATH`" in msg and "`pretrained=False`" in msg and "demo" in msg and "--" not in msg
    assert hf_constants.HF_HUB_OFFLINE == before
    # huggingface_hub's process-wide offline switch is never flipped (other threads share it)
    assert all(flag == before for flag in offline_during)
    if not before:
        assert calls, "the hub reachability check was not consulted"
    assert not any(hf_home.rglob("*.safetensors"))


def test_unreachable_hub_loads_cached_weights_without_the_network(monkeypatch, tmp_path):
    """Hub unreachable, weights in the local Hugging Face cache: they load (from that file),
    nothing touches the network, and huggingface_hub's global offline flag stays as it was."""
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.file_download as hf_download
    from safetensors.torch import save_file

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    hub = tmp_path / "hub"
    snap = hub / f"models--timm--{name}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (hub / f"models--timm--{name}" / "refs").mkdir()
    (hub / f"models--timm--{name}" / "refs" / "main").write_text("0" * 40)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.manual_seed(0)
    with torch.no_grad():
        ref.head.weight.normal_()                        # weights a fresh model does not have
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(snap / "model.safetensors"))
    for attr in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if hasattr(hf_constants, attr):
            monkeypatch.setattr(hf_constants, attr, str(hub))
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)

    def no_network(*a, **k):
        raise AssertionError("the network was used")

    import timm.models._hub as timm_hub

    monkeypatch.setattr(hf_download, "hf_hub_download", no_network)
    monkeypatch.setattr(timm_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    model, _ = vitlens.load_model(name, device="cpu")
    assert hf_constants.HF_HUB_OFFLINE is False
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------- preprocess
IMAGENET_CFG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    img = vitlens.load_image(CHELSEA)
    assert img.size == (451, 300)
    return img


def test_preprocess_center_crop(chelsea):
    pre = vitlens.preprocess(chelsea, IMAGENET_CFG)
    assert isinstance(pre.tensor, torch.Tensor)
    assert pre.tensor.shape == (3, 224, 224)
    assert pre.tensor.dtype == torch.float32
    x0, y0, x1, y1 = pre.box
    w, h = chelsea.size
    # inside the image
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # centred
    assert (x0 + x1) / 2 == pytest.approx(w / 2, abs=0.5)
    assert (y0 + y1) / 2 == pytest.approx(h / 2, abs=0.5)
    # independent geometry: short side 300 -> floor(224 / 0.875) = 256, then a 224 crop,
    # so the crop covers 224 * 300 / 256 = 262.5 original pixels in both directions
    side = 224 * h / 256
    assert x1 - x0 == pytest.approx(side, abs=0.75)
    assert y1 - y0 == pytest.approx(side, abs=0.75)


def test_preprocess_squash_full_image_box(chelsea):
    cfg = {**IMAGENET_CFG, "crop_pct": 1.0, "crop_mode": "squash"}
    pre = vitlens.preprocess(chelsea, cfg)
    assert pre.tensor.shape == (3, 224, 224)
    assert pre.box == pytest.approx((0.0, 0.0, 451.0, 300.0), abs=1e-6)


def test_preprocess_box_matches_pixels(chelsea):
    """Crop the box from the original with PIL; it must look like timm's transform output."""
    pre = vitlens.preprocess(chelsea, IMAGENET_CFG)
    mean = torch.tensor(IMAGENET_CFG["mean"]).view(3, 1, 1)
    std = torch.tensor(IMAGENET_CFG["std"]).view(3, 1, 1)
    ours = (pre.tensor * std + mean).permute(1, 2, 0).numpy()
    ref = chelsea.resize((224, 224), resample=Image.Resampling.BICUBIC, box=tuple(float(v) for v in pre.box))
    ref = np.asarray(ref, dtype=np.float32) / 255.0
    diff = float(np.abs(ours - ref).mean())
    assert diff < 0.02, diff
    # ...and a box shifted by 20 px is clearly worse (the check has teeth)
    x0, y0, x1, y1 = pre.box
    shifted = chelsea.resize((224, 224), resample=Image.Resampling.BICUBIC, box=(x0 - 20, y0, x1 - 20, y1))
    worse = float(np.abs(ours - np.asarray(shifted, dtype=np.float32) / 255.0).mean())
    assert worse > 2 * diff


def test_make_transform_matches_preprocess(chelsea):
    t = vitlens.make_transform(IMAGENET_CFG)
    assert torch.equal(t(chelsea), vitlens.preprocess(chelsea, IMAGENET_CFG).tensor)


def test_demo_preprocess_shape(chelsea, demo):
    _, cfg = demo
    pre = vitlens.preprocess(chelsea, cfg)
    assert pre.tensor.shape == (3, 32, 32)
    x0, y0, x1, y1 = pre.box
    assert 0 <= x0 < x1 <= 451 and 0 <= y0 < y1 <= 300


# ---------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_cuda_is_a_clear_error(device):
    with pytest.raises(VitlensError) as info:
        models.resolve_device(device)
    assert "CUDA is not available" in str(info.value)
    assert "cpu" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_model_on_cuda_without_cuda():
    with pytest.raises(VitlensError, match="CUDA"):
        vitlens.load_model("demo", device="cuda")


@pytest.mark.parametrize("device", ["bogus", "gpu", "cpu:x", ""])
def test_bogus_device_string(device):
    with pytest.raises(VitlensError) as info:
        models.resolve_device(device)
    assert "device" in str(info.value)


def test_resolve_device_ok():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device(torch.device("cpu")).type == "cpu"
    assert models.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
