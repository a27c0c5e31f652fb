"""A fine-tuned checkpoint with its own classes and preprocessing (issue #14, item 4).

Covers ``load_model(classes=..., data_config=...)``, ``read_class_names``, prefixed and
wrapped state dicts (Lightning's ``{"state_dict": {"model.…": …}}``, DataParallel's
``module.``, torch.compile's ``_orig_mod.``), the error when only a prefix differs, and the
CLI options --classes, --input-size, --mean, --std, --crop-pct, --interpolation,
--data-config.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vitlens
from vitlens.errors import CheckpointError, VitlensError
from vitlens.models import load_model, read_class_names

REPO = Path(__file__).resolve().parents[2]
CHELSEA = REPO / "examples" / "chelsea.jpg"
FLOWERS = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


@pytest.fixture(scope="module")
def finetuned() -> dict[str, torch.Tensor]:
    """The demo ViT with a new 5-class head, weights perturbed so they differ from the demo's."""
    model = load_model("demo").model
    model.reset_classifier(5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 0.1)
        model.blocks[0].attn.qkv.weight.add_(torch.randn(model.blocks[0].attn.qkv.weight.shape, generator=g) * 0.01)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _image() -> torch.Tensor:
    m, cfg = load_model("demo")
    return vitlens.preprocess(Image.open(CHELSEA).convert("RGB"), cfg).tensor[None]


@pytest.mark.parametrize("wrap", ["plain", "lightning", "module", "compiled", "lightning+ddp", "model_state_dict"])
def test_prefixed_and_wrapped_checkpoints_load_the_same_weights(tmp_path, finetuned, wrap):
    if wrap == "plain":
        obj = finetuned
    elif wrap == "lightning":  # LightningModule with self.model = <the ViT>; extra entries beside state_dict
        obj = {"state_dict": {f"model.{k}": v for k, v in finetuned.items()}, "epoch": 3, "global_step": 120}
    elif wrap == "module":
        obj = {f"module.{k}": v for k, v in finetuned.items()}
    elif wrap == "compiled":
        obj = {f"_orig_mod.{k}": v for k, v in finetuned.items()}
    elif wrap == "lightning+ddp":
        obj = {"state_dict": {f"model.module.{k}": v for k, v in finetuned.items()}}
    else:
        obj = {"model_state_dict": finetuned, "optimizer_state_dict": {}}
    path = tmp_path / f"{wrap}.pt"
    torch.save(obj, path)
    model = load_model("demo", checkpoint=path).model
    assert model.num_classes == 5
    got = model.state_dict()
    assert got.keys() == finetuned.keys()
    for k, v in finetuned.items():
        assert torch.equal(got[k], v), k


def test_lightning_extra_modules_outside_the_prefix_are_ignored(tmp_path, finetuned):
    sd = {f"model.{k}": v for k, v in finetuned.items()}
    sd["criterion.weight"] = torch.ones(5)      # e.g. a weighted loss kept in the LightningModule
    torch.save({"state_dict": sd}, tmp_path / "l.ckpt")
    model = load_model("demo", checkpoint=tmp_path / "l.ckpt").model
    assert torch.equal(model.head.weight, finetuned["head.weight"])


def test_prefix_plus_a_real_mismatch_says_the_prefix_is_not_the_problem(tmp_path, finetuned):
    sd = {f"model.{k}": v for k, v in finetuned.items() if not k.startswith("blocks.5.")}
    torch.save({"state_dict": sd}, tmp_path / "l.ckpt")
    with pytest.raises(CheckpointError) as info:
        load_model("demo", checkpoint=tmp_path / "l.ckpt")
    msg = str(info.value)
    assert "prefix 'model.'" in msg and "missing from the checkpoint: blocks.5." in msg
    assert "prefix is not the problem" in msg


def test_model_with_a_prefix_the_checkpoint_lacks_is_named(tmp_path, finetuned):
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = load_model("demo").model
    torch.save(finetuned, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(Wrapper(), checkpoint=tmp_path / "bare.pt")
    msg = str(info.value)
    assert "except for a key prefix" in msg and "'backbone.'" in msg and "model.backbone" in msg
    assert "architecture" not in msg


@pytest.mark.parametrize("kind", ["txt", "json-list", "json-map", "json-imagenet", "json-cfg"])
def test_read_class_names(tmp_path, kind):
    p = tmp_path / ("c.txt" if kind == "txt" else "c.json")
    if kind == "txt":
        p.write_text("\n".join(FLOWERS) + "\n\n")
    elif kind == "json-list":
        p.write_text(json.dumps(FLOWERS))
    elif kind == "json-map":
        p.write_text(json.dumps({str(i): n for i, n in reversed(list(enumerate(FLOWERS)))}))
    elif kind == "json-imagenet":
        p.write_text(json.dumps({str(i): [f"n{i:08d}", n] for i, n in enumerate(FLOWERS)}))
    else:
        p.write_text(json.dumps({"label_names": FLOWERS, "num_classes": 5}))
    assert read_class_names(p) == FLOWERS


@pytest.mark.parametrize("content,match", [
    ("", "holds no class name"),
    ("a\nb\na\n", "more than once"),
])
def test_read_class_names_refuses(tmp_path, content, match):
    p = tmp_path / "c.txt"
    p.write_text(content)
    with pytest.raises(VitlensError, match=match):
        read_class_names(p)
    with pytest.raises(VitlensError, match="gaps"):
        (tmp_path / "g.json").write_text(json.dumps({"0": "a", "2": "b"}))
        read_class_names(tmp_path / "g.json")


def test_classes_name_the_outputs_and_must_match_their_count(tmp_path, finetuned):
    torch.save(finetuned, tmp_path / "ft.pt")
    model = load_model("demo", checkpoint=tmp_path / "ft.pt").model
    assert vitlens.class_names(model) is None  # the demo's 10 CIFAR names do not fit a 5-class head
    model = load_model("demo", checkpoint=tmp_path / "ft.pt", classes=FLOWERS).model
    assert vitlens.class_names(model) == FLOWERS
    with pytest.raises(VitlensError, match="10 class names for a model with 5 outputs"):
        load_model("demo", checkpoint=tmp_path / "ft.pt", classes=list("abcdefghij"))
    assert vitlens.class_names(load_model("demo").model)[3] == "cat"  # the shared default is untouched


def test_data_config_overrides_go_through_timm(tmp_path):
    base = load_model("demo").data_config
    _, cfg = load_model("demo", data_config={"mean": (0.5, 0.5, 0.5), "std": [0.25, 0.25, 0.25],
                                             "crop_pct": 0.5, "interpolation": "bilinear"})
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.25, 0.25, 0.25)
    assert cfg["crop_pct"] == 0.5 and cfg["interpolation"] == "bilinear" and cfg["input_size"] == base["input_size"]
    # the transform really uses them: compare with torchvision's own pipeline
    from torchvision import transforms as T

    img = Image.open(CHELSEA).convert("RGB")
    ref = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize((0.5,) * 3, (0.25,) * 3)])(img)
    assert torch.allclose(vitlens.preprocess(img, cfg).tensor, ref, atol=1e-5)
    # a timm-style pretrained_cfg JSON file
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1], "num_classes": 10}}))
    assert load_model("demo", data_config=p).data_config["mean"] == (0.1, 0.2, 0.3)
    # a dynamic-size model takes another input size; a fixed-size one refuses it clearly
    with pytest.raises(VitlensError, match="accepts only 32x32"):
        load_model("demo", data_config={"input_size": 48})
    with pytest.raises(VitlensError, match="crop_pct"):
        load_model("demo", data_config={"crop_pct": 1.5})
    with pytest.raises(VitlensError, match="unknown preprocessing key 'scale'"):
        load_model("demo", data_config={"scale": 2})


def test_cli_classes_target_name_and_preprocessing(tmp_path, finetuned):
    from vitlens.cli.main import cli

    torch.save({"state_dict": {f"model.{k}": v for k, v in finetuned.items()}}, tmp_path / "ft.ckpt")
    (tmp_path / "flowers.txt").write_text("\n".join(FLOWERS))
    args = ["attend", str(CHELSEA), "--model", "demo", "--checkpoint", str(tmp_path / "ft.ckpt"),
            "--classes", str(tmp_path / "flowers.txt"), "--out", str(tmp_path / "o"), "--method", "chefer",
            "--target", "tulip", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--crop-pct", "1",
            "--interpolation", "bilinear"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert all(n in first for n in FLOWERS), first
    assert "explains: tulip (class 4" in r.stdout
    # the printed probabilities are those of the model under exactly that preprocessing
    model = load_model("demo", checkpoint=tmp_path / "ft.ckpt").model
    cfg = dict(load_model("demo").data_config, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation="bilinear")
    x = vitlens.preprocess(Image.open(CHELSEA).convert("RGB"), cfg).tensor[None]
    with torch.no_grad():
        p = model(x).softmax(-1)[0]
    best = int(p.argmax())
    assert first.split(": ", 1)[1].startswith(f"{FLOWERS[best]} {float(p[best]):.3f}")

    r = CliRunner().invoke(cli, ["attend", str(CHELSEA), "--model", "demo", "--mean", "0.5,0.5", "--out",
                                 str(tmp_path / "o2")])
    assert r.exit_code == 2 and "three numbers" in r.stderr


def test_cli_evaluate_labels_by_class_file(tmp_path, finetuned):
    from vitlens.cli.main import cli

    torch.save(finetuned, tmp_path / "ft.safetensors.pt")
    root = tmp_path / "imgs"
    for name in ("rose", "tulip"):
        (root / name).mkdir(parents=True)
        Image.open(CHELSEA).convert("RGB").resize((40, 40)).save(root / name / "0.png")
    (tmp_path / "flowers.json").write_text(json.dumps(FLOWERS))
    r = CliRunner().invoke(cli, ["evaluate", str(root), "--model", "demo", "--checkpoint",
                                 str(tmp_path / "ft.safetensors.pt"), "--classes", str(tmp_path / "flowers.json"),
                                 "--labels", "--methods", "random", "--metrics", "positive", "--quiet", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["n_images"] == 2
