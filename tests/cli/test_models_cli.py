"""``vitlens models``: lists what capture supports, checked by building each on the meta device."""
from __future__ import annotations

from vitlens.capture import supported_families, supported_models

from .helpers import assert_one_line_error, run


def test_lists_families_by_name():
    res = run("models", "deit_tiny*")
    assert res.exit_code == 0, res.stderr
    rows = dict(line.split() for line in res.stdout.splitlines())
    assert rows["deit_tiny_distilled_patch16_224"] == "VisionTransformer"
    assert rows["deit_tiny_patch16_224"] == "VisionTransformer"
    assert dict(supported_models("swin_tiny*", family="Swin")) == {"swin_tiny_patch4_window7_224": "Swin"}
    assert dict(supported_models("beitv2_base*"))["beitv2_base_patch16_224"] == "BEiT"


def test_unsupported_and_unknown():
    res = run("models", "resnet*")
    assert res.exit_code == 1 and "no supported model" in res.stderr
    res = run("models", "--family", "ConvNeXt")
    assert res.exit_code == 2 and all(f in res.stderr for f in supported_families()[:2])
    assert supported_models("xcit_nano*") == []  # channel attention: not token attention
    assert_one_line_error(run("attend", "x.jpg", "--model", "xcit_nano_12_p16_224", "--no-pretrained"),
                          "unsupported architecture", "VisionTransformer", "Swin")
