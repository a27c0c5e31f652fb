"""The multimodal towers' encoders built alone (issue #11 a): ``qwen3_vit_*_enc``,
``deepseek_vit_*_enc``, ``gemma4_vit_*_enc`` are recorded exactly; what needs a prediction
refuses them with the reason (they return tokens for a language model, not class logits).

The oracle and hook-hygiene tests (test_oracle.py) run on the adapters' ``test_models``;
these check the token order the layout claims, that the encoder records what the same tower
records inside its classifier, and every refusal in the library (the CLI:
tests/cli/test_tower_encoders_cli.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models.qwen3_vit import resample_pos_embed_grid

import vitlens
from vitlens.capture import adapter_for, logits_of, require_logits
from vitlens.capture.adapters.gemma4_vit import Gemma4VitEncoderAdapter
from vitlens.capture.adapters.vit_towers import VitTowerEncoderAdapter
from vitlens.errors import UnsupportedModelError

REASON = "returns tokens for a language model, not class logits"
CUE_CONFLICT = Path(__file__).resolve().parents[1] / "data" / "cue-conflict"

QWEN, DEEPSEEK = VitTowerEncoderAdapter.test_models  # tiny configurations, 2 blocks of 4 heads
GEMMA = Gemma4VitEncoderAdapter.test_models[0]       # input 48x96: a 3x6 patch grid
ENCODERS = {"qwen": QWEN, "deepseek": DEEPSEEK, "gemma": GEMMA}


def build(name: str, kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def image_for(model, batch: int = 2) -> torch.Tensor:
    h, w = adapter_for(model).default_input_size()
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(3))


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_the_six_encoder_architectures_are_supported():
    from vitlens.capture.adapters import model_verdicts

    verdicts = {n: (fam, why) for n, _m, fam, why in model_verdicts("*_vit_*_enc")}
    want = {n: "ViT tower encoder" for n in ("qwen3_vit_88m_enc", "qwen3_vit_306m_enc", "qwen3_vit_416m_enc",
                                             "deepseek_vit_412m_enc")}
    want.update({n: "Gemma4 ViT encoder" for n in ("gemma4_vit_167m_enc", "gemma4_vit_570m_enc")})
    assert {n: fam for n, (fam, _) in verdicts.items() if n in want} == want
    assert set(want) <= set(verdicts)


@pytest.mark.parametrize("key", sorted(ENCODERS))
def test_hook_points_sit_at_the_models_root(key):
    model = build(*ENCODERS[key])
    adapter = adapter_for(model)
    assert type(adapter) is (Gemma4VitEncoderAdapter if key == "gemma" else VitTowerEncoderAdapter)
    desc = adapter.describe()
    assert list(desc.hook_points()) == ["blocks.0.attn", "blocks.1.attn"]
    assert desc.gradcam_points == ("blocks.0.norm1", "blocks.1.norm1")
    assert [p for p, _ in adapter.block_points()] == ["blocks.0", "blocks.1"]
    assert desc.num_prefix_tokens == 0 and not desc.has_cls and desc.class_logits is False
    for p in desc.hook_points():
        model.get_submodule(p)  # every named point exists


@pytest.mark.parametrize("key", ["qwen", "deepseek"])
def test_tokens_enter_the_blocks_in_row_major_patch_order(key):
    """The layout says token i is patch (i // gw, i % gw). Qwen's reference orders tokens by its
    spatial merge (2x2 blocks), timm's encoder does not: the blocks see the NHWC patch grid
    flattened row-major (plus the resampled position embedding, Qwen), the merge comes after."""
    model = build(*ENCODERS[key])
    x = image_for(model)
    seen = {}
    model.patch_embed.register_forward_hook(lambda _m, _a, out: seen.__setitem__("grid", out))
    model.blocks[0].register_forward_pre_hook(lambda _m, a, k=None: seen.__setitem__("tokens", a[0]))
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    grid = seen["grid"]
    b, gh, gw, c = grid.shape
    assert cache.layout.grid_size == (gh, gw) and cache.layout.num_tokens == gh * gw
    rows = torch.stack([grid[:, i, j] for i in range(gh) for j in range(gw)], 1)  # row-major, by hand
    if key == "qwen":
        rows = rows + resample_pos_embed_grid(model.pos_embed, model.pos_embed_grid_size, (gh, gw))
    assert torch.equal(seen["tokens"], rows)


@pytest.mark.parametrize("key", sorted(ENCODERS))
def test_encoder_records_what_its_tower_records_inside_the_classifier(key):
    name, kwargs = ENCODERS[key]
    enc = build(name, kwargs)
    clf = build(name[:-len("_enc")], {k: v for k, v in kwargs.items() if k != "out_features"}, seed=1)
    missing, _unexpected = clf.encoder.load_state_dict(enc.state_dict(), strict=False)
    assert not missing  # the classifier's tower has every weight from the encoder
    x = image_for(enc)
    with torch.no_grad(), vitlens.capture(enc) as a:
        enc(x)
    with torch.no_grad(), vitlens.capture(clf) as b:
        clf(x)
    assert a.num_layers == b.num_layers == 2 and a.layout == b.layout
    for layer in a.layers:
        assert torch.equal(a.attention(layer), b.attention(layer))


@pytest.mark.parametrize("key", sorted(ENCODERS))
def test_what_needs_a_prediction_refuses_with_the_reason(key):
    model = build(*ENCODERS[key])
    x = image_for(model)
    grid = adapter_for(model).layout_for(tuple(x.shape[-2:])).grid_size
    before = _hooks(model)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)  # a plain tensor of tokens, which must not pass as logits
    calls = {
        "logits_of": lambda: logits_of(model, out),
        "require_logits": lambda: require_logits(model),
        "explain rollout": lambda: vitlens.explain(model, x, method="rollout"),
        "explain ig": lambda: vitlens.explain(model, x, method="ig", n_steps=2),
        "evaluate": lambda: vitlens.evaluate(model, x, methods=["rollout"]),
        "deletion_curve": lambda: vitlens.deletion_curve(model, x, torch.rand(x.shape[0], *grid),
                                                         torch.zeros(x.shape[0], dtype=torch.long)),
        "token_importance": lambda: vitlens.token_importance(model, x),
        "shape_bias": lambda: vitlens.shape_bias(model, CUE_CONFLICT, mapping="imagenet16"),
    }
    for what, call in calls.items():
        with pytest.raises(UnsupportedModelError, match=REASON) as e:
            call()
        assert type(model).__name__ in str(e.value) and "without _enc" in str(e.value), what
    assert _hooks(model) == before
    # ... while capture and the analyses without logits or CLS token run
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    gh, gw = cache.layout.grid_size
    r = vitlens.rollout(cache)
    assert r.shape == (2, gh, gw) and torch.allclose(r.sum((1, 2)), torch.ones(2))
    assert vitlens.mean_attention_distance(cache).shape == (2, 2, 4)
    assert vitlens.attention_entropy(cache).shape == (2, 2, 4)
    assert vitlens.attention_received(cache).shape == (2, gh, gw)


def test_classifiers_still_give_their_logits():
    model = build("qwen3_vit_88m", dict(img_size=64, depth=2, embed_dim=64, num_heads=4, num_classes=5))
    x = image_for(model)
    with torch.no_grad():
        out = model(x)
    assert logits_of(model, out) is out
    require_logits(model)
    assert adapter_for(model).describe().class_logits is True


def test_gemma4_encoder_refuses_naflex_input_and_leaks_nothing():
    model = build(*GEMMA)
    x = image_for(model)
    patches, (gh, gw) = timm.models.naflexvit.batch_patchify(x, (16, 16))
    coord = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1).reshape(1, -1, 2)
    coord = coord.expand(2, -1, -1).clone()
    before = _hooks(model)
    for call in (lambda: model(patches, patch_coord=coord), lambda: model({"patches": patches, "patch_coord": coord})):
        with pytest.raises(UnsupportedModelError, match="NaFlex input .* refused"):
            with torch.no_grad(), vitlens.capture(model):
                call()
    assert _hooks(model) == before
