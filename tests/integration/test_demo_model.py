"""The bundled demo models (the ViT and the Swin): load offline, are recorded exactly, and reach their
accuracy on the CIFAR-10 test split (the ViT >= 70%)."""
from __future__ import annotations

import io
import json
import tarfile
from importlib import resources
from pathlib import Path

import pytest
import torch
from PIL import Image

import vitlens
import vitlens.models
from vitlens.models import DEMOS

from ..conftest import shared_data

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


#: bundled demo -> the test accuracy it must reach on the 10,000 CIFAR-10 test images
FLOORS = {"demo": 0.70, "demo-swin": 0.50}


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_assets_ship_in_the_package(name):
    files = resources.files("vitlens.assets")
    stem = DEMOS[name]
    weights = files / f"{stem}.safetensors"
    meta = json.loads((files / f"{stem}.json").read_text())
    assert weights.is_file() and len(weights.read_bytes()) <= 8 * 1024 * 1024
    assert meta["labels"] == list(CLASSES)
    assert not meta.get("placeholder"), "the shipped demo weights must be the trained ones"
    assert meta["test_accuracy"] >= FLOORS[name]
    model, cfg = vitlens.load_model(name)
    assert type(model).__name__ == meta["architecture"]
    assert cfg["input_size"] == (3, 32, 32)
    assert vitlens.class_names(model) == list(CLASSES)
    assert vitlens.models.is_demo(model.pretrained_cfg["architecture"])
    with torch.no_grad(), vitlens.capture(model) as cache:      # an adapter claims it exactly
        model(torch.zeros(1, 3, 32, 32))
    assert len(cache) == cache.num_layers == sum(meta["model_config"].get("depths", [meta["model_config"].get("depth")]))


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_accuracy_on_cifar10_test_split(name):
    archive = shared_data("cifar10", "cifar10-jpg.tar.gz")
    if archive is None:
        pytest.skip("CIFAR-10 archive not found (set VITLENS_SHARED_DATA to the shared/data folder)")
    model, cfg = vitlens.load_model(name, device="cpu")
    transform = vitlens.make_transform(cfg)
    xs, ys = [], []
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and "test" in parts and m.name.endswith(".jpg"):
                img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                xs.append(transform(img))
                ys.append(CLASSES.index(parts[parts.index("test") + 1]))
    assert len(xs) == 10_000
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xs), 500):
            pred = model(torch.stack(xs[i:i + 500])).argmax(-1)
            correct += (pred == torch.tensor(ys[i:i + 500])).sum().item()
    acc = correct / len(xs)
    print(f"{name} CIFAR-10 test accuracy: {acc:.4f}")
    assert acc >= FLOORS[name]
