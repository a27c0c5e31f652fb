"""AttentionCache is a read-only Mapping keyed by hook point; layouts validate without assert."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

import vitlens
from vitlens.capture.cache import TokenLayout, WindowLayout


@pytest.fixture(scope="module")
def cache():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3, num_classes=3).eval()
    with torch.no_grad(), vitlens.capture(model, layers=[0, 2]) as c:
        model(torch.randn(2, 3, 32, 32))
    return c


def test_mapping_protocol(cache):
    assert list(cache) == ["blocks.0.attn", "blocks.2.attn"] == list(cache.keys())
    assert len(cache) == 2
    assert "blocks.0.attn" in cache and "blocks.1.attn" not in cache and "nope" not in cache
    assert 0 in cache and -1 in cache and 1 not in cache and 3 not in cache
    assert cache["blocks.2.attn"] is cache.attention(2) and cache[-1] is cache.attention(2)
    assert dict(cache.items())["blocks.0.attn"].shape == (2, 3, 5, 5)
    with pytest.raises(KeyError, match="recorded: \\['blocks.0.attn', 'blocks.2.attn'\\]"):
        cache["blocks.1.attn"]
    assert cache.get("blocks.1.attn") is None
    with pytest.raises(TypeError):
        cache["blocks.0.attn"] = torch.zeros(1)  # read-only
    assert cache == cache and cache != object()


def test_repr_is_compact(cache):
    text = repr(cache)
    assert len(text.splitlines()) == 1 and "layers=2/3" in text and "[2, 3, 5, 5]" in text and "tensor(" not in text


def test_from_tensors_keys():
    layout = TokenLayout(1, ("cls",), (2, 2), (16, 16), (32, 32))
    c = vitlens.AttentionCache.from_tensors([torch.full((1, 2, 5, 5), 0.2)] * 2, layout)
    assert list(c) == ["layers.0", "layers.1"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_prefix_tokens=2, prefix_names=("cls",), grid_size=(2, 2), patch_size=(16, 16), input_size=(32, 32)),
     "prefix_names"),
    (dict(num_prefix_tokens=0, prefix_names=(), grid_size=(2, 0), patch_size=(16, 16), input_size=(32, 32)),
     "grid_size"),
])
def test_layout_validation_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenLayout(**kwargs)
    with pytest.raises(ValueError, match="num_windows"):
        WindowLayout(layer=0, stage=0, grid_size=(8, 8), window_size=(4, 4), shift_size=(0, 0), num_windows=3,
                     patch_size=(4, 4))


def test_validation_survives_python_O(tmp_path):
    code = ("from vitlens.capture.cache import TokenLayout\n"
            "try:\n    TokenLayout(2, ('cls',), (2, 2), (16, 16), (32, 32))\nexcept ValueError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "refused", out.stderr
