"""Hugging Face transformers models through vitlens: window geometry, gradient methods, analyses,
loading (``hf:PATH``, an already-built model, offline, the missing extra) and the CLI.

The per-family oracle tests (captured attention == transformers' eager ``output_attentions``
to 1e-5, logits bit-identical inside/outside capture, hooks restored) are generated from the
adapters' ``test_models`` in ``test_oracle.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vitlens  # noqa: E402
from vitlens.analysis.gradients import _attention_and_gradients, gradcam, input_x_gradient, integrated_gradients  # noqa: E402
from vitlens.analysis.lrp import lrp_relevance  # noqa: E402
from vitlens.capture.adapters import adapter_for, registered_adapters  # noqa: E402
from vitlens.capture.adapters.hf_swin import HFSwinAdapter, HFSwinV2Adapter  # noqa: E402
from vitlens.capture.adapters.hf_vit import HFCLIPVisionAdapter, HFSiglipVisionAdapter, HFViTAdapter  # noqa: E402
from vitlens.errors import UnsupportedModelError, VitlensError, WeightsUnavailableError  # noqa: E402

from tests.cli.helpers import assert_one_line_error, run  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VIT = HFViTAdapter.test_models[0]
SWIN = HFSwinAdapter.test_models[0]
SWIN_PADDED = HFSwinAdapter.test_models[1]


def images_for(model, n=2, seed=1):
    h, w = adapter_for(model).default_input_size()
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("builder", [SWIN, SWIN_PADDED, HFSwinV2Adapter.test_models[1]],
                         ids=["swin", "swin-padded", "swinv2-padded"])
def test_window_layout_places_tokens_as_transformers_does(builder):
    """token_index == transformers' own pad, roll and window_partition applied to token numbers."""
    model = builder()
    adapter = adapter_for(model)
    mod = sys.modules[type(model).__module__]
    windows = adapter.window_layouts(adapter.default_input_size())
    blocks = adapter._blocks_of(model)
    assert len(windows) == len(blocks)
    for wl, (_s, _p, blk) in zip(windows, blocks):
        (h, w), ws = wl.grid_size, wl.window_size[0]
        ids = (torch.arange(h * w, dtype=torch.float32) + 1).reshape(1, h, w, 1)  # 0 marks padding
        padded, _ = blk.maybe_pad(ids, h, w)
        shift = wl.shift_size[0]
        rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2)) if shift else padded
        ref = mod.window_partition(rolled, ws).reshape(-1, ws * ws).long() - 1
        assert torch.equal(wl.token_index(), ref), wl
    assert any(w.padded_size != w.grid_size for w in windows) or builder is SWIN


# ----------------------------------------------------------------------------- gradients
def _eager_attention_and_grads(builder, x, target):
    """Attention weights transformers' eager path multiplies with v, and the target logit's gradients."""
    eager = builder("eager")
    paths = [p for p, _ in adapter_for(eager).attention_modules()]
    seen = {}
    handles = [eager.get_submodule(p).register_forward_hook(
        lambda _m, _a, out, p=p: seen.__setitem__(p, out[1])) for p in paths]
    try:
        logits = eager(x, output_attentions=True).logits
    finally:
        for h in handles:
            h.remove()
    attns = [seen[p] for p in paths]
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attns)
    return logits.detach(), attns, grads


@pytest.mark.parametrize("builder", [VIT, SWIN], ids=["vit", "swin"])
def test_attention_gradients_equal_transformers_eager_autograd(builder):
    model = builder()
    x = images_for(model)
    target = torch.tensor([1, 3])
    logits, tgt, cache, attns, grads = _attention_and_gradients(model, x, target)
    ref_logits, ref_attns, ref_grads = _eager_attention_and_grads(builder, x, target)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(tgt, target)
    for a, g, ra, rg in zip(attns, grads, ref_attns, ref_grads, strict=True):
        torch.testing.assert_close(a, ra.detach().reshape(a.shape), atol=1e-5, rtol=0)
        torch.testing.assert_close(g, rg.reshape(g.shape), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("builder", [VIT, SWIN], ids=["vit", "swin"])
def test_input_x_gradient_and_integrated_gradients(builder):
    model = builder()
    x = images_for(model)
    target = torch.tensor([0, 2])
    xg = x.clone().requires_grad_(True)
    score = model(xg).logits.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, xg)
    torch.testing.assert_close(input_x_gradient(model, x, target), x * grad, atol=1e-6, rtol=1e-5)
    # completeness (Sundararajan et al. 2017): attributions sum to f(x) - f(b) for each image (a noise
    # baseline: at an all-zero image the patch embedding is constant and layer norm ill-conditioned)
    base = images_for(model, seed=7)
    ig = integrated_gradients(model, x, target, n_steps=64, baselines=base)
    with torch.no_grad():
        gap = (model(x).logits - model(base).logits).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(ig.sum(dim=(1, 2, 3)), gap, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("builder", [VIT, SWIN], ids=["vit", "swin"])
def test_gradcam_reads_the_named_transformers_module(builder):
    """Grad-CAM by hand on the adapter's module path: α_k = mean ∂y/∂F_k, map = ReLU(Σ α_k F_k)."""
    model = builder()
    x = images_for(model)
    target = torch.tensor([4, 1])
    desc = adapter_for(model).describe()
    point = desc.gradcam_points[-1]
    assert point in dict(model.named_modules())
    feats = {}

    def keep(_m, _a, out):
        t = out[0] if isinstance(out, tuple) else out
        t.retain_grad()
        feats["f"] = t

    h = model.get_submodule(point).register_forward_hook(keep)
    try:
        model(x).logits.gather(1, target[:, None]).sum().backward()
    finally:
        h.remove()
    f, g = feats["f"], feats["f"].grad
    P = desc.layout.num_prefix_tokens
    if desc.windowed:
        hs, ws = desc.windows[-1].grid_size
    else:
        hs, ws = desc.layout.grid_size
    f, g = f[:, P:], g[:, P:]
    cam = torch.relu((g.mean(dim=1, keepdim=True) * f).sum(-1)).reshape(-1, hs, ws)
    got = gradcam(model, x, target, desc.layout, layer=-1)
    if desc.windowed:  # the last stage's map placed on the first-stage grid
        s = desc.windows[-1].stage
        gh, gw = desc.layout.grid_size
        cam = cam[:, torch.arange(gh) >> s][:, :, torch.arange(gw) >> s]
    torch.testing.assert_close(got, cam.detach(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("builder", [VIT, SWIN], ids=["vit", "swin"])
def test_every_explain_method_runs_or_refuses_with_the_reason(builder):
    model = builder()
    x = images_for(model)
    grid = adapter_for(model).layout_for(tuple(x.shape[-2:])).grid_size
    for method in vitlens.EXPLAIN_METHODS:
        if builder is SWIN and method in ("cls", "chefer"):
            with pytest.raises((ValueError, UnsupportedModelError), match="CLS token|windows"):
                vitlens.explain(model, x, method=method)
            continue
        maps = vitlens.explain(model, x, method=method)
        assert maps.shape == (2, *grid) and torch.isfinite(maps).all(), method


# ----------------------------------------------------------------------------- LRP
HF_FAMILIES = [cls for cls in registered_adapters() if cls.family.startswith("HF-")]
#: learned token / position parameters: their relevance is part of the conserved total
TOKEN_PARAMS = ("cls_token", "distillation_token", "register_tokens", "position_embeddings", "mask_token",
                "class_embedding")


@pytest.mark.parametrize("family", HF_FAMILIES, ids=[cls.family for cls in HF_FAMILIES])
def test_lrp_conserves_the_logit_on_every_transformers_family(family):
    """Bias-free model in float64: CP-LRP's relevance (pixels + token and position parameters) sums to
    the target logit (Ali et al. 2022); AttnLRP differs (its softmax rule's bias term). A rule missed
    on a transformers module (its GELU, layer norm, SDPA, patch merging, pooling) breaks the sum.
    CLIP/SigLIP look their position table up with F.embedding, which takes no relevance: zeroed."""
    model = family.test_models[0]().double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or n.endswith("position_embedding.weight"):
                p.zero_()
            elif "norm" in n and n.endswith("weight"):
                p.normal_(1, 0.2)  # SwinV2 zero-initialises its post-norms: make every branch count
    x = images_for(model).double()
    flags = [getattr(m, "use_head", None) for m in model.modules()]  # SigLIP's head is off during the pass
    extras = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in TOKEN_PARAMS]
    totals = {}
    for variant in ("cp-lrp", "attnlrp"):
        rel, logits, tgt, layout, ex = lrp_relevance(model, x, variant=variant, extra_inputs=extras)
        torch.testing.assert_close(logits, model(x).logits, atol=1e-9, rtol=1e-9)  # the forward is unchanged
        assert layout == adapter_for(model).layout_for(tuple(x.shape[-2:]))
        totals[variant] = float((rel.sum() + sum(e.sum() for e in ex)) / logits.gather(1, tgt[:, None]).sum())
    assert totals["cp-lrp"] == pytest.approx(1.0, abs=1e-9)
    assert totals["attnlrp"] != pytest.approx(1.0, abs=1e-6)
    assert [getattr(m, "use_head", None) for m in model.modules()] == flags


# ----------------------------------------------------------------------------- analyses
def test_analyses_on_captured_hf_attention_equal_those_on_transformers_eager_attention():
    model = VIT()
    x = images_for(model)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    with torch.no_grad():
        eager = VIT("eager")(x, output_attentions=True).attentions
    ref = vitlens.AttentionCache.from_tensors(list(eager), cache.layout)
    torch.testing.assert_close(vitlens.rollout(cache), vitlens.rollout(ref), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vitlens.cls_attention(cache), vitlens.cls_attention(ref), atol=1e-5, rtol=0)
    torch.testing.assert_close(vitlens.mean_attention_distance(cache), vitlens.mean_attention_distance(ref),
                               atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(vitlens.attention_entropy(cache), vitlens.attention_entropy(ref),
                               atol=1e-4, rtol=1e-5)


def test_swin_rollout_and_distance_run_and_siglip_has_no_cls():
    model = SWIN_PADDED()
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(images_for(model))
    roll = vitlens.rollout(cache)
    assert roll.shape == (2, 9, 13)
    torch.testing.assert_close(roll.sum(dim=(1, 2)), torch.ones(2), atol=1e-5, rtol=0)
    dist = vitlens.mean_attention_distance(cache)  # [B, L, 4]: stage 0 has 2 heads (NaN beyond)
    assert torch.isfinite(dist[:, :2, :2]).all() and torch.isnan(dist[:, :2, 2:]).all()
    assert torch.isfinite(dist[:, 2:]).all()
    siglip = HFSiglipVisionAdapter.test_models[0]()
    with torch.no_grad(), vitlens.capture(siglip) as cache:
        siglip(images_for(siglip))
    assert cache.layout.prefix_names == ()
    with pytest.raises(ValueError, match="no CLS token"):
        vitlens.cls_attention(cache)
    assert vitlens.rollout(cache).shape == (2, 4, 4)


def test_a_backbone_without_head_has_no_logits_and_says_so():
    tower = HFCLIPVisionAdapter.test_models[1]()  # CLIPVisionModelWithProjection: embeddings only
    with pytest.raises(UnsupportedModelError, match="no classification head"):
        vitlens.explain(tower, images_for(tower), method="grad-rollout")
    with torch.no_grad(), vitlens.capture(tower) as cache:  # attention analyses need no logits
        tower(images_for(tower))
    assert vitlens.rollout(cache).shape == (2, 4, 4)


def test_an_unrecordable_attention_implementation_is_refused():
    model = VIT()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="flash_attention_2.*attn_implementation='sdpa'"):
        with vitlens.capture(model):
            pass


# ----------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random-init ViT and Swin written with save_pretrained (labels, image processor)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, builder in (("vit", VIT), ("swin", SWIN)):
        model = builder()
        model.config.id2label = {i: f"thing{i}" for i in range(5)}
        model.config.label2id = {v: k for k, v in model.config.id2label.items()}
        model.save_pretrained(root / name)
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.4, 0.4],
                                       image_std=[0.2, 0.2, 0.2]).save_pretrained(root / name)
        out[name] = (root / name, model)
    return out


def test_load_model_reads_a_save_pretrained_folder(saved):
    path, model = saved["vit"]
    loaded = vitlens.load_model(f"hf:{path}", device="cpu")
    assert type(loaded.model) is type(model) and not loaded.model.training
    assert loaded.data_config["mean"] == (0.4, 0.4, 0.4) and loaded.data_config["input_size"] == (3, 32, 32)
    assert vitlens.class_names(loaded.model) == [f"thing{i}" for i in range(5)]
    for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    built = vitlens.load_model(model, device="cpu")  # an already-built PreTrainedModel
    assert built.model is model and built.data_config["input_size"] == (3, 32, 32)


def test_hub_names_offline_get_the_clear_message(monkeypatch):
    monkeypatch.setattr(vitlens.models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError, match=r"not in the local Hugging Face cache.*Hub cannot be reached"
                       r".*save_pretrained as `name=hf:PATH`"):
        vitlens.load_model("hf:google/vit-base-patch16-not-cached", device="cpu")
    res = run("attend", "--model", "hf:google/vit-base-patch16-not-cached", EXAMPLES / "chelsea.jpg")
    assert_one_line_error(res, "Hub cannot be reached", "--model hf:PATH")


def test_missing_extra_gives_one_line_saying_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(VitlensError, match=r"pip install 'vitlens\[hf\]'") as e:
        vitlens.load_model("hf:google/vit-base-patch16-224", device="cpu")
    assert "\n" not in str(e.value)
    res = run("export", "--model", "hf:google/vit-base-patch16-224", EXAMPLES, tmp_path / "o.h5")
    assert_one_line_error(res, "pip install 'vitlens[hf]'")


# ----------------------------------------------------------------------------- CLI
def test_save_pretrained_folder_through_the_cli(saved, tmp_path):
    from vitlens.export import read

    for name in ("vit", "swin"):
        path, model = saved[name]
        out = tmp_path / f"{name}.h5"
        res = run("export", "--model", f"hf:{path}", "--device", "cpu", EXAMPLES, out)
        assert res.exit_code == 0, res.stderr
        with read(out) as data:
            names = [p.decode() if isinstance(p, bytes) else str(p) for p in data["images/path"][:]]
            logits, roll = torch.as_tensor(data["logits"][:]), data["rollout"][:]
        cfg = vitlens.load_model(f"hf:{path}", device="cpu").data_config
        x = torch.stack([vitlens.preprocess(vitlens.load_image(EXAMPLES / p), cfg).tensor for p in names])
        with torch.no_grad():
            want = model(x).logits
        torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)
        grid = (8, 8) if name == "swin" else (4, 4)
        assert tuple(roll.shape) == (len(names), *grid)
        method = "rollout" if name == "swin" else "cls"
        res = run("attend", "--model", f"hf:{path}", "--device", "cpu", "--method", method,
                  "--out", tmp_path / name, EXAMPLES / "chelsea.jpg")
        assert res.exit_code == 0, res.stderr
        assert "thing" in res.stdout  # class names from config.id2label
        for cmd in (["distance"], ["evaluate", "--methods", "rollout,random"]):
            res = run(*cmd, "--model", f"hf:{path}", "--device", "cpu", EXAMPLES)
            assert res.exit_code == 0, (cmd, res.stderr)


def test_gradient_checkpointing_gives_the_same_maps_and_is_restored():
    model = VIT()
    x = images_for(model)
    plain = vitlens.explain(model, x, method="grad-rollout")
    model.activation_checkpointing_enable()
    model.train()  # transformers checkpoints only in training mode
    flags = [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    assert any(flags)
    torch.testing.assert_close(vitlens.explain(model, x, method="grad-rollout"), plain, atol=1e-6, rtol=1e-5)
    assert [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")] == flags


def test_shape_bias_importance_explore_and_inspect_through_the_cli(saved, tmp_path):
    """shape-bias on a 1000-class transformers ViT (hf:PATH) against the protocol computed by hand on the
    model: each stimulus resized to 32 x 32 with the processor's resample (bilinear), normalised with
    its mean/std (0.5), softmax, per category the mean probability of the imagenet16 classes."""
    import json

    import numpy as np
    from PIL import Image

    from vitlens.analysis.shape_bias import load_mapping

    stimuli = Path(__file__).resolve().parents[1] / "data" / "cue-conflict"
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_labels=1000, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    model.save_pretrained(tmp_path / "vit1k")  # no preprocessor_config.json: ViTImageProcessor's defaults
    res = run("shape-bias", stimuli, "--model", f"hf:{tmp_path / 'vit1k'}", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["mapping"] == "imagenet16" and data["n_images"] == 32 and data["texture_attention"] is not None
    mapping = load_mapping("imagenet16")
    for d in data["decisions"]:
        img = Image.open(stimuli / d["path"]).convert("RGB").resize((32, 32), Image.BILINEAR)
        x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1) - 0.5) / 0.5
        with torch.no_grad():
            probs = model(x[None]).logits.double().softmax(-1)[0]
        want = {c: float(probs[list(mapping.classes[c])].mean()) for c in mapping.categories}
        assert d["scores"] == pytest.approx(want, rel=1e-5, abs=0), d["path"]  # bicubic: ~2e-3 off
        assert d["decision"] == max(want, key=want.get) or d["outcome"] == "excluded"
    n_shape = sum(d["decision"] == d["shape"] != d["texture"] for d in data["decisions"])
    n_texture = sum(d["decision"] == d["texture"] != d["shape"] for d in data["decisions"])
    assert (data["n_shape"], data["n_texture"]) == (n_shape, n_texture)
    assert data["shape_bias"] == pytest.approx(n_shape / (n_shape + n_texture))

    path, _ = saved["vit"]
    res = run("importance", "--model", f"hf:{path}", "--device", "cpu", EXAMPLES)
    assert_one_line_error(res, "ViTForImageClassification: it is a transformers model", "pixel metrics")
    res = run("explore", "--model", f"hf:{path}", "--device", "cpu", EXAMPLES / "chelsea.jpg",
              "--out", tmp_path / "page.html")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "page.html").stat().st_size > 1000
    res = run("export", "--model", f"hf:{path}", "--device", "cpu", EXAMPLES / "chelsea.jpg", tmp_path / "one.h5")
    assert res.exit_code == 0, res.stderr
    res = run("inspect", tmp_path / "one.h5")
    assert res.exit_code == 0, res.stderr
    assert f"model: hf:{path}" in res.stdout and "prefix tokens [cls], 2 layers x 4 heads" in res.stdout
