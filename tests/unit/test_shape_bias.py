"""Tests for ``vitlens.shape_bias`` (vitlens/analysis/shape_bias.py) and its plot.

The protocol (Geirhos et al. 2019, https://arxiv.org/abs/1811.12231, as computed by
model-vs-human and written down in shared/data/cue-conflict/SOURCE.md) is re-implemented
here independently, image by image with PIL and numpy, and compared with the library on
the 32-image subset in tests/data/cue-conflict (CC BY 4.0, see its ATTRIBUTION.md).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vitlens
from vitlens.analysis.shape_bias import (CUE_CONFLICT_CATEGORIES, HUMAN_SHAPE_BIAS, ShapeBiasResult, TextureAttention,
                                         default_mapping_name, load_mapping, texture_label)
from vitlens.errors import VitlensError
from vitlens.models import data_config_of

from ..conftest import shared_data

HERE = Path(__file__).resolve()
STIMULI = HERE.parents[1] / "data" / "cue-conflict"
PIL_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
SUBSET_NAMES = sorted(f"{p.parent.name}/{p.name}" for p in STIMULI.glob("*/*.png"))


# ------------------------------------------------------------------ reference protocol
def reference_protocol(model: nn.Module, root: Path, mapping: dict[str, list[int]], size: tuple[int, int],
                       interpolation: str, mean, std) -> dict:
    """SOURCE.md steps 1-7, written independently of vitlens: one image per forward pass."""
    cats = sorted(mapping)
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    per_image = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.png")):
            shape = folder.name                                                   # step 4
            texture = re.sub(r"\d", "", f.name.split("_")[-1].rsplit(".", 1)[0].split("-")[-1])
            if shape not in mapping or texture not in mapping:
                continue
            img = Image.open(f).convert("RGB").resize((size[1], size[0]), PIL_INTERP[interpolation])  # step 1
            arr = (np.asarray(img, dtype=np.float32) / np.float32(255.0) - mean32) / std32
            x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
            with torch.no_grad():
                logits = model(x)
            p = torch.softmax(logits.double(), dim=-1)[0].numpy()                 # step 2
            scores = np.array([np.mean(p[mapping[c]]) for c in cats])             # step 3
            per_image[f"{shape}/{f.name}"] = (shape, texture, cats[int(np.argmax(scores))], scores)
    conflict = {k: v for k, v in per_image.items() if v[0] != v[1]}                # step 5
    n_shape = sum(v[2] == v[0] for v in conflict.values())                        # step 6
    n_texture = sum(v[2] == v[1] for v in conflict.values())
    return {"per_image": per_image, "n_shape": n_shape, "n_texture": n_texture,
            "n_other": len(conflict) - n_shape - n_texture, "n_excluded": len(per_image) - len(conflict),
            "shape_bias": n_shape / (n_shape + n_texture) if n_shape + n_texture else None, "cats": cats}


def assert_matches_reference(res: ShapeBiasResult, ref: dict) -> None:
    cats = ref["cats"]
    assert res.categories == tuple(cats)
    scored = {d.path: d for d in res.decisions if d.outcome != "uncovered"}
    assert set(scored) == set(ref["per_image"])
    for path, (shape, texture, decision, scores) in ref["per_image"].items():
        d = scored[path]
        assert (d.shape, d.texture) == (shape, texture)
        mine = np.array([d.scores[c] for c in cats])
        np.testing.assert_allclose(mine, scores, rtol=1e-4, atol=1e-9)
        if d.decision != decision:  # only tolerated for a numerical near-tie
            top2 = np.sort(scores)[-2:]
            assert top2[1] - top2[0] < 1e-7, (path, d.decision, decision, top2)
    assert (res.n_shape, res.n_texture, res.n_other, res.n_excluded) == (
        ref["n_shape"], ref["n_texture"], ref["n_other"], ref["n_excluded"])
    assert res.shape_bias == ref["shape_bias"]


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_vit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    with torch.no_grad():  # random-init attention is near uniform; sharpen it so shares differ
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def tiny_result(tiny_vit) -> ShapeBiasResult:
    return vitlens.shape_bias(tiny_vit, STIMULI, batch_size=7)


class FixedLogits(nn.Module):
    """A fake classifier: image k (red channel == k everywhere) gets logits ``log(probs[k])``."""

    def __init__(self, probs: list[list[float]]):
        super().__init__()
        p = torch.tensor(probs, dtype=torch.float64) + 1e-9
        self.register_buffer("table", torch.log(p / p.sum(1, keepdim=True)))
        self.num_classes = p.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = (x[:, 0].mean(dim=(1, 2)) * 255).round().long()
        return self.table[idx].float()


#: 6 classes: cat = {0, 1}, dog = {2}, car = {3}, bird = {4, 5}.
FAKE_MAPPING = {"cat": [0, 1], "dog": [2], "car": [3], "bird": [4, 5]}
FAKE_CFG = {"input_size": (3, 8, 8), "interpolation": "bilinear", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
#: file -> class probabilities; comments give the decision under the mean rule.
FAKE_FILES: dict[str, list[float]] = {
    # cat mean .30, sum .60, dog .35 -> dog (texture); a sum rule would say cat (shape)
    "cat/cat1-dog1.png": [.30, .30, .35, .05, 0, 0],
    "cat/cat2-car1.png": [.40, .40, .10, .10, 0, 0],      # cat -> shape
    "cat/cat3-cat1.png": [.00, .00, .90, .10, 0, 0],      # shape == texture -> excluded
    "dog/dog1-cat2.png": [.00, .00, .10, .90, 0, 0],      # car -> other
    "dog/dog2-bird1.png": [.00, .00, .20, .00, .40, .40],  # bird .40 -> texture
    "car/car1-bird2.png": [.00, .00, .00, .60, .20, .20],  # car -> shape
    # bird mean .30 vs dog .40 -> texture (dog); a max rule would say bird (.55, shape)
    "bird/bird1-dog3.png": [.00, .00, .40, .00, .55, .05],
    "bear/bear1-cat1.png": [.90, .10, .00, .00, 0, 0],    # shape not covered -> uncovered
    "cat/cat4-elephant1.png": [.90, .10, 0, 0, 0, 0],     # texture not covered -> uncovered
}


def write_fake_stimuli(root: Path, files: dict[str, list[float]] = FAKE_FILES) -> FixedLogits:
    """Write 8x8 PNGs whose red channel encodes the row of the logits table."""
    for k, rel in enumerate(files):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (k, 100, 200)).save(p)
    return FixedLogits(list(files.values()))


def fake_run(root: Path, mapping=FAKE_MAPPING, **kw) -> ShapeBiasResult:
    model = kw.pop("model", None) or FixedLogits(list(FAKE_FILES.values()))
    return vitlens.shape_bias(model, root, mapping, data_config=FAKE_CFG, **kw)


# --------------------------------------------------------------- protocol equality
def test_subset_layout():
    assert len(SUBSET_NAMES) == 32
    assert {n.split("/")[0] for n in SUBSET_NAMES} == set(CUE_CONFLICT_CATEGORIES)
    assert any(texture_label(n.split("/")[1]) == n.split("/")[0] for n in SUBSET_NAMES)


def test_imagenet16_matches_reference(tiny_vit, tiny_result):
    cfg = data_config_of(tiny_vit)
    size = tuple(tiny_vit.patch_embed.img_size)
    assert size == (64, 64) and tiny_result.input_size == size
    mapping = json.loads((STIMULI.parents[2] / "vitlens" / "assets" / "imagenet16_categories.json").read_text())
    ref = reference_protocol(tiny_vit, STIMULI, mapping, size, cfg["interpolation"], cfg["mean"], cfg["std"])
    assert_matches_reference(tiny_result, ref)
    assert tiny_result.mapping == "imagenet16" and len(tiny_result.categories) == 16
    assert tiny_result.n_uncovered == 0 and tiny_result.categories_skipped == ()
    assert tiny_result.n_excluded == 2  # bear1-bear3, cat1-cat3
    assert tiny_result.n_images == 32
    assert [d.path for d in tiny_result.decisions] == SUBSET_NAMES


def test_cifar10_demo_matches_reference(demo):
    model, cfg = demo
    res = vitlens.shape_bias(demo, STIMULI)  # auto-selects the CIFAR-10 mapping
    mapping = {"airplane": [0], "bird": [2], "car": [1], "cat": [3], "dog": [5], "boat": [8], "truck": [9]}
    ref = reference_protocol(model, STIMULI, mapping, tuple(cfg["input_size"][-2:]), cfg["interpolation"],
                             cfg["mean"], cfg["std"])
    assert_matches_reference(res, ref)
    assert res.mapping == "cifar10" and res.model == "demo" and res.input_size == (32, 32)
    assert res.categories == ("airplane", "bird", "boat", "car", "cat", "dog", "truck")
    assert res.categories_skipped == ("bear", "bicycle", "bottle", "chair", "clock", "elephant", "keyboard",
                                      "knife", "oven")
    assert res.categories_missing == ()
    n_covered = sum(1 for n in SUBSET_NAMES
                    if n.split("/")[0] in mapping and texture_label(n.split("/")[1]) in mapping)
    assert n_covered == len(ref["per_image"]) == 14
    assert res.n_uncovered == 32 - n_covered
    assert res.n_shape + res.n_texture + res.n_other + res.n_excluded + res.n_uncovered == res.n_images == 32
    assert all(d.decision is None for d in res.decisions if d.outcome == "uncovered")
    by_name = vitlens.shape_bias("demo", STIMULI, texture_attention=False)  # a name works too
    assert [d.decision for d in by_name.decisions] == [d.decision for d in res.decisions]
    assert by_name.texture_attention is None and "not requested" in by_name.texture_attention_reason


def test_result_dict_is_json_and_per_category_consistent(tiny_result):
    d = json.loads(json.dumps(tiny_result.to_dict(), allow_nan=False))
    assert d["shape_bias"] == tiny_result.shape_bias and d["n_images"] == 32
    assert d["mapping"] == "imagenet16" and d["model"] == "vit_tiny_patch16_224"
    assert len(d["decisions"]) == 32 and set(d["decisions"][0]) >= {"path", "shape", "texture", "decision", "outcome"}
    assert d["skipped"] == [{"path": "ATTRIBUTION.md", "reason": "not an image file (outside the category folders)"}]
    for cat, value in tiny_result.per_category.items():
        rows = [x for x in tiny_result.decisions if x.shape == cat and x.outcome in ("shape", "texture")]
        n_s = sum(x.outcome == "shape" for x in rows)
        assert value == (n_s / len(rows) if rows else None)  # None, not NaN, without decisions
    assert tiny_result.summary().startswith("vit_tiny_patch16_224: shape bias ")


def test_texture_attention_aggregates(tiny_result):
    ta = tiny_result.texture_attention
    assert isinstance(ta, TextureAttention) and tiny_result.texture_attention_reason is None
    assert ta.layer == 1 and ta.head == "mean"
    scored = [d for d in tiny_result.decisions if d.outcome in ("shape", "texture", "other")]
    assert ta.n_images == len(scored) == 30
    assert ta.share == pytest.approx(np.mean([d.texture_share for d in scored]))
    for outcome, value in (("shape", ta.share_shape), ("texture", ta.share_texture), ("other", ta.share_other)):
        shares = [d.texture_share for d in scored if d.outcome == outcome]
        assert value == (pytest.approx(np.mean(shares)) if shares else None)
    assert 0.5 <= ta.chance <= 1.0


def test_texture_share_matches_direct_computation(tiny_vit, tmp_path):
    src = STIMULI / "cat" / "cat1-airplane1.png"
    (tmp_path / "cat").mkdir()
    shutil.copy(src, tmp_path / "cat" / src.name)
    res = vitlens.shape_bias(tiny_vit, tmp_path)
    share = res.decisions[0].texture_share

    cfg = data_config_of(tiny_vit)
    img = Image.open(src).convert("RGB").resize((64, 64), PIL_INTERP[cfg["interpolation"]])
    rgb = np.asarray(img, dtype=np.float64) / 255.0
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    var = np.array([[grey[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].var() for c in range(4)] for r in range(4)])
    high = (var >= np.median(var)).reshape(-1)

    arr = (np.asarray(img, dtype=np.float32) / 255.0 - np.float32(0.5)) / np.float32(0.5)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    m = tiny_vit
    with torch.no_grad():  # the last block's attention, computed by hand from its q and k
        t = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for blk in m.blocks[:-1]:
            t = blk(t)
        blk = m.blocks[-1]
        h = blk.norm1(t)
        b, n, c = h.shape
        qkv = blk.attn.qkv(h).reshape(b, n, 3, blk.attn.num_heads, c // blk.attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = blk.attn.q_norm(qkv[0]), blk.attn.k_norm(qkv[1])
        attn = ((q * blk.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    cls = attn[0, :, 0, 1:].mean(0).double().numpy()   # CLS row over the 16 patches, mean over heads
    expected = cls[high].sum() / cls.sum()
    assert share == pytest.approx(expected, abs=1e-5)
    assert abs(expected - high.mean()) > 1e-3  # the attention is not uniform: the test means something
    assert res.texture_attention.share == pytest.approx(expected, abs=1e-5)
    assert res.texture_attention.chance == pytest.approx(high.mean())
    assert res.decisions[0].outcome in ("shape", "texture", "other")


# ---------------------------------------------------------------- forced logits
def test_forced_logits_counts_exactly(tmp_path):
    write_fake_stimuli(tmp_path)
    model = FixedLogits(list(FAKE_FILES.values())).train()
    res = fake_run(tmp_path, model=model, batch_size=4)
    assert model.training  # train/eval state restored
    outcome = {d.path: d.outcome for d in res.decisions}
    assert outcome == {
        "cat/cat1-dog1.png": "texture", "cat/cat2-car1.png": "shape", "cat/cat3-cat1.png": "excluded",
        "dog/dog1-cat2.png": "other", "dog/dog2-bird1.png": "texture", "car/car1-bird2.png": "shape",
        "bird/bird1-dog3.png": "texture", "bear/bear1-cat1.png": "uncovered",
        "cat/cat4-elephant1.png": "uncovered"}
    assert (res.n_shape, res.n_texture, res.n_other, res.n_excluded, res.n_uncovered) == (2, 3, 1, 1, 2)
    assert res.n_images == 9 and res.shape_bias == pytest.approx(2 / 5)
    assert res.per_category == {"bird": 0.0, "car": 1.0, "cat": 0.5, "dog": 0.0}
    assert res.per_category_counts["dog"] == {"n_shape": 0, "n_texture": 1, "n_other": 1}
    assert res.categories == ("bird", "car", "cat", "dog")
    assert res.categories_skipped == ("bear", "elephant")
    assert res.mapping == "custom" and res.model == "FixedLogits"
    d = {x.path: x for x in res.decisions}
    assert d["cat/cat1-dog1.png"].scores["cat"] == pytest.approx(0.30, abs=1e-6)  # the mean, not the sum
    assert d["cat/cat3-cat1.png"].decision == "dog"
    assert res.texture_attention is None and "does not support" in res.texture_attention_reason


def test_all_texture_decisions_give_zero_and_none_when_undefined(tmp_path):
    files = {"cat/cat1-dog1.png": [0, 0, 1, 0, 0, 0], "dog/dog1-car1.png": [0, 0, 0, 1, 0, 0],
             "car/car1-car2.png": [1, 0, 0, 0, 0, 0]}
    model = write_fake_stimuli(tmp_path, files)
    res = fake_run(tmp_path, model=model)
    assert (res.n_shape, res.n_texture, res.n_other, res.n_excluded) == (0, 2, 0, 1)
    assert res.shape_bias == 0.0
    assert res.per_category["car"] is None and res.per_category["bird"] is None
    assert res.categories_missing == ("bird",)

    only_same = tmp_path / "same"
    model = write_fake_stimuli(only_same, {"cat/cat1-cat2.png": [1, 0, 0, 0, 0, 0]})
    res = fake_run(only_same, model=model)
    assert res.shape_bias is None and res.n_excluded == 1


def test_partial_mapping(tmp_path):
    write_fake_stimuli(tmp_path)
    partial = {"cat": [0, 1], "dog": [2], "car": [3]}  # bird (classes 4, 5) not covered
    res = fake_run(tmp_path, partial)
    assert res.categories == ("car", "cat", "dog")
    assert res.categories_skipped == ("bear", "bird", "elephant")
    outcome = {d.path: d.outcome for d in res.decisions}
    for rel in ("dog/dog2-bird1.png", "car/car1-bird2.png", "bird/bird1-dog3.png", "bear/bear1-cat1.png",
                "cat/cat4-elephant1.png"):
        assert outcome[rel] == "uncovered"
    assert (res.n_shape, res.n_texture, res.n_other, res.n_excluded, res.n_uncovered) == (1, 1, 1, 1, 5)
    assert res.shape_bias == 0.5

    # decisions are the argmax over the covered categories only
    files = {"cat/cat1-dog1.png": [.25, .25, .15, .0, .35, 0]}  # bird .175 would lose to cat .25 anyway
    files["dog/dog1-cat1.png"] = [.10, .10, .20, .0, .60, 0]   # top class bird; among covered: dog
    model = write_fake_stimuli(tmp_path / "b", files)
    res = fake_run(tmp_path / "b", partial, model=model)
    assert {d.path: d.decision for d in res.decisions} == {"cat/cat1-dog1.png": "cat", "dog/dog1-cat1.png": "dog"}


# ------------------------------------------------------------------- bad folders
def test_missing_categories_are_reported(tmp_path):
    write_fake_stimuli(tmp_path)
    shutil.rmtree(tmp_path / "car")
    (tmp_path / "bird" / "bird1-dog3.png").unlink()  # an empty folder counts as missing too
    res = fake_run(tmp_path)
    assert res.categories_missing == ("bird", "car")
    assert res.categories == ("bird", "car", "cat", "dog")  # still possible decisions
    assert res.n_images == 7 and res.per_category["car"] is None


@pytest.mark.parametrize("rel, reason", [
    ("cats/cats1-dog1.png", "'cats' is not a category"),
    ("cat/cat1.png", "has no texture label"),
    ("cat/cat1-zebra1.png", "texture label 'zebra'"),
    ("cat/cat1-.png", "has no texture label"),
    ("cat1-dog1.png", "not inside a category folder"),
])
def test_invalid_names_are_errors(tmp_path, rel, reason):
    write_fake_stimuli(tmp_path)
    p = tmp_path / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(p)
    with pytest.raises(VitlensError, match=re.escape(reason)) as e:
        fake_run(tmp_path)
    assert Path(rel).name in str(e.value) or rel.split("/")[0] in str(e.value)


def test_unknown_folder_suggests_close_match(tmp_path):
    write_fake_stimuli(tmp_path)
    (tmp_path / "airplanes").mkdir()
    with pytest.raises(VitlensError, match="did you mean airplane"):
        fake_run(tmp_path)


def test_non_images_and_unreadable_images_are_skipped_and_reported(tmp_path):
    write_fake_stimuli(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "cat" / "notes.txt").write_text("hello")
    (tmp_path / "cat" / "._cat1-dog1.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (tmp_path / "cat" / "nested").mkdir()
    good = (tmp_path / "dog" / "dog1-cat2.png").read_bytes()
    (tmp_path / "dog" / "dog1-cat2.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (tmp_path / "car" / "car2-cat1.png").write_bytes(b"")  # empty file
    res = fake_run(tmp_path)
    reasons = {s.path: s.reason for s in res.skipped}
    assert set(reasons) == {"notes.txt", ".DS_Store", "cat/notes.txt", "cat/._cat1-dog1.png", "cat/nested",
                            "dog/dog1-cat2.png", "car/car2-cat1.png"}
    assert "not an image file" in reasons["notes.txt"] and "hidden" in reasons[".DS_Store"]
    assert "truncated or corrupt" in reasons["dog/dog1-cat2.png"]
    assert "empty" in reasons["car/car2-cat1.png"]
    # the unreadable 'other' image is gone from the counts, nothing else changed
    assert (res.n_shape, res.n_texture, res.n_other, res.n_excluded, res.n_uncovered) == (2, 3, 0, 1, 2)
    assert "dog/dog1-cat2.png" not in {d.path for d in res.decisions}


def test_unreadable_uncovered_image_is_reported_too(tmp_path):
    write_fake_stimuli(tmp_path)
    (tmp_path / "bear" / "bear1-cat1.png").write_bytes(b"not a png")
    res = fake_run(tmp_path)
    assert [s.path for s in res.skipped] == ["bear/bear1-cat1.png"] and res.n_uncovered == 1


def test_empty_missing_and_unreadable_folders_are_errors(tmp_path):
    with pytest.raises(VitlensError, match="no stimuli found"):
        fake_run(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(VitlensError, match="no stimuli found"):
        fake_run(tmp_path)
    with pytest.raises(VitlensError, match="does not exist"):
        fake_run(tmp_path / "nope")
    with pytest.raises(VitlensError, match="is a file"):
        fake_run(tmp_path / "readme.txt")
    (tmp_path / "cat" / "cat1-dog1.png").write_bytes(b"garbage")
    with pytest.raises(VitlensError, match="could be read"):
        fake_run(tmp_path)


# --------------------------------------------------------------------- mappings
def test_texture_label_follows_source_quirks():
    assert texture_label("cat7-elephant1.png") == "elephant"
    assert texture_label("airplane10-airplane1.png") == "airplane"
    assert texture_label("prefix_cat7-dog12.png") == "dog"      # after the last '_' first
    assert texture_label("a-b_cat7-dog2.png") == "dog"
    assert texture_label("cat1.png") is None
    assert texture_label("some_cat1.png") is None


def test_builtin_mappings():
    im = load_mapping("imagenet16")
    assert im.categories == CUE_CONFLICT_CATEGORIES and sum(len(v) for v in im.classes.values()) == 207
    assert im.classes["airplane"] == (404,) and 286 in im.classes["cat"] and 151 not in im.classes["dog"]
    cf = load_mapping("cifar10")
    assert cf.classes == {"airplane": (0,), "bird": (2,), "boat": (8,), "car": (1,), "cat": (3,), "dog": (5,),
                          "truck": (9,)}
    assert HUMAN_SHAPE_BIAS == 0.96


def test_default_mapping_selection(tiny_vit, demo):
    assert default_mapping_name(tiny_vit) == "imagenet16"
    assert default_mapping_name(demo.model) == "cifar10"
    seven = FixedLogits([[1] * 7])
    with pytest.raises(VitlensError, match="pass `mapping=PATH`"):
        default_mapping_name(seven)


def test_mapping_errors(tmp_path, demo):
    write_fake_stimuli(tmp_path)
    with pytest.raises(VitlensError, match=r"class index 404, but the model has 10 classes"):
        vitlens.shape_bias(demo, STIMULI, "imagenet16")
    with pytest.raises(VitlensError, match="class index 7, but the model has 6 classes"):
        fake_run(tmp_path, {"cat": [7]})
    model = write_fake_stimuli(tmp_path)
    del model.num_classes  # discovered from the logits instead
    with pytest.raises(VitlensError, match="class index 7, but the model has 6 classes"):
        fake_run(tmp_path, {"cat": [7]}, model=model)
    with pytest.raises(VitlensError, match="pass `mapping=PATH`"):
        fake_run(tmp_path, None)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(VitlensError, match="not valid JSON"):
        fake_run(tmp_path, bad)
    for content, msg in (({"cat": []}, "non-empty list"), ({"cat": [-1]}, "negative"), ([1, 2], "JSON object"),
                         ({"cat": ["3"]}, "integers"), ({"cat": [1, 1]}, "twice")):
        bad.write_text(json.dumps(content))
        with pytest.raises(VitlensError, match=msg):
            fake_run(tmp_path, bad)
    with pytest.raises(VitlensError, match="neither a built-in mapping"):
        fake_run(tmp_path, "imagenet61")
    good = tmp_path / "m.json"
    good.write_text(json.dumps(FAKE_MAPPING))
    assert fake_run(tmp_path, good).mapping == str(good)


def test_custom_category_names_extend_the_known_set(tmp_path):
    files = {"circle/circle1-square1.png": [1, 0], "square/square1-circle2.png": [1, 0]}
    model = write_fake_stimuli(tmp_path, files)
    res = fake_run(tmp_path, {"circle": [0], "square": [1]}, model=model)
    assert (res.n_shape, res.n_texture) == (1, 1)


def test_input_size_mismatch_is_a_clear_error(tiny_vit):
    cfg = {**data_config_of(tiny_vit), "input_size": (3, 224, 224)}
    with pytest.raises(VitlensError, match=r"accepts only \(64, 64\)"):
        vitlens.shape_bias(tiny_vit, STIMULI, data_config=cfg)


def test_no_cls_model_has_no_texture_attention(tmp_path):
    import timm

    model = timm.create_model("vit_medium_patch16_gap_256", pretrained=False, img_size=32, depth=1,
                              num_classes=6).eval()
    write_fake_stimuli(tmp_path)
    res = vitlens.shape_bias(model, tmp_path, FAKE_MAPPING)
    assert res.texture_attention is None and "no CLS token" in res.texture_attention_reason
    assert res.n_images == 9


# ------------------------------------------------------------------------- plot
def test_shape_bias_plot(tiny_result, tmp_path):
    from matplotlib.figure import Figure

    from vitlens.export.figures import save_figure
    from vitlens.export.shape_bias_plot import shape_bias_plot

    write_fake_stimuli(tmp_path)
    fake = fake_run(tmp_path)
    fig = shape_bias_plot([tiny_result, fake.to_dict()], title="cmp")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlim() == (1.0, 0.0)
    xs = {round(float(line.get_xdata()[0]), 6) for line in ax.get_lines()}
    assert {0.96, round(fake.shape_bias, 6)} <= xs
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "airplane"  # first category at the top
    assert "shape" in ax.get_xlabel().lower()
    out = tmp_path / "p.pdf"
    save_figure(fig, out)
    assert out.stat().st_size > 1000
    # a category without any shape or texture decision is labelled, not left as a blank row
    d = fake.to_dict()
    d["per_category"] = {**d["per_category"], "zebra": None}
    ax = shape_bias_plot(d).axes[0]
    notes = [t for t in ax.texts if t.get_text() == "no shape or texture decision"]
    assert len(notes) == 1 and notes[0].get_position()[1] == len(d["per_category"]) - 1 - sorted(d["per_category"]).index("zebra")
    n_empty = sum(v is None for v in fake.per_category.values())
    assert len([t for t in shape_bias_plot(fake).axes[0].texts if "no shape" in t.get_text()]) == n_empty
    with pytest.raises(ValueError, match="labels"):
        shape_bias_plot([fake], labels=["a", "b"])
    with pytest.raises(TypeError):
        shape_bias_plot([object()])


# ------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_full_cue_conflict_set_with_demo(demo):
    root = shared_data("cue-conflict")
    if root is None:
        pytest.skip("shared/data/cue-conflict not found (set VITLENS_SHARED_DATA)")
    res = vitlens.shape_bias(demo, root, batch_size=64)
    print()
    print(res.summary())
    print("per category:", res.per_category)
    print("skipped:", [s.path for s in res.skipped])
    assert res.n_images == 1280
    assert res.n_excluded == 7 * 5
    assert res.n_shape + res.n_texture + res.n_other + res.n_excluded + res.n_uncovered == 1280
    assert {s.path for s in res.skipped} <= {"SOURCE.md", "imagenet16_categories.json"}
