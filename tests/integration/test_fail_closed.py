"""Matching fails closed: look-alikes, differential attention and compiled models are refused
with the reason; gradient checkpointing does not change gradient maps; no module outside
``vitlens/capture`` reads model attributes or matches family names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

import vitlens
from vitlens.capture.adapters import adapter_for
from vitlens.errors import UnsupportedModelError


def tiny_vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2,
                             num_classes=4, **kw).eval()


class LookAlikeAttention(Attention):
    """Same attributes as timm's Attention, different maths (e.g. a temperature)."""

    def forward(self, x, attn_mask=None, is_causal=False):
        return super().forward(x * 2.0, attn_mask=attn_mask)


def test_a_look_alike_attention_subclass_is_refused():
    model = tiny_vit()
    old = model.blocks[1].attn
    new = LookAlikeAttention(dim=192, num_heads=3, qkv_bias=True)
    new.load_state_dict(old.state_dict())
    model.blocks[1].attn = new
    with pytest.raises(UnsupportedModelError, match=r"blocks\.1\.attn is .*LookAlikeAttention.*no vitlens adapter claims"):
        adapter_for(model)
    with pytest.raises(UnsupportedModelError):
        with vitlens.capture(model):
            pass


def test_a_model_subclass_is_refused():
    class MyViT(VisionTransformer):
        pass

    model = MyViT(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=2, num_classes=3)
    with pytest.raises(UnsupportedModelError, match="subclasses VisionTransformer .*exact classes"):
        adapter_for(model)


def test_differential_attention_is_refused_with_the_reason():
    name = next(n for n in timm.list_models("vit_dlittle*"))
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    with pytest.raises(UnsupportedModelError, match="differential attention.*softmax_1 - lambda"):
        adapter_for(model)


def test_a_compiled_model_is_refused_in_one_line_and_its_eager_module_records_the_same():
    model = tiny_vit()
    compiled = torch.compile(model)
    with pytest.raises(UnsupportedModelError, match=r"torch.compile.*_orig_mod") as e:
        with vitlens.capture(compiled):
            pass
    assert "\n" not in str(e.value)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), vitlens.capture(compiled._orig_mod) as a:
        compiled._orig_mod(x)
    with torch.no_grad(), vitlens.capture(model) as b:
        model(x)
    for layer in a.layers:
        assert torch.equal(a.attention(layer), b.attention(layer))


@pytest.mark.parametrize("method", ["chefer", "grad-rollout"])
@pytest.mark.parametrize("name,kw", [("vit_tiny_patch16_224", dict(img_size=32, depth=3)),
                                     ("swin_tiny_patch4_window7_224",
                                      dict(img_size=64, window_size=4, depths=(2, 2), num_heads=(2, 4),
                                           embed_dim=16))])
def test_gradient_checkpointing_gives_the_same_maps(method, name, kw):
    if method == "chefer" and name.startswith("swin"):
        pytest.skip("chefer needs token-level attention (refused on Swin)")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4, **kw).eval()
    h, w = adapter_for(model).default_input_size()
    x = torch.randn(2, 3, h, w)
    plain = vitlens.explain(model, x, method=method)
    model.set_grad_checkpointing(True)
    checkpointed = vitlens.explain(model, x, method=method)
    torch.testing.assert_close(checkpointed.maps if hasattr(checkpointed, "maps") else checkpointed,
                               plain.maps if hasattr(plain, "maps") else plain, atol=1e-6, rtol=1e-5)
    assert all(getattr(m, "grad_checkpointing", True) for m in [model])  # restored


def test_describe_says_what_the_analyses_need():
    model = tiny_vit(reg_tokens=2)
    d = adapter_for(model).describe((48, 32))
    assert d.layout.prefix_names == ("cls", "reg", "reg")
    assert d.has_cls and not d.windowed
    assert d.hook_points() == {"blocks.0.attn": "[B, H, T, T]", "blocks.1.attn": "[B, H, T, T]"}
    assert d.gradcam_points == ("blocks.0.norm1", "blocks.1.norm1") and d.gradcam_kind == "tokens"
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
                             depths=(2, 2), num_heads=(2, 4), embed_dim=16)
    d = adapter_for(swin).describe()
    assert d.windowed and not d.has_cls and len(d.windows) == 4
    assert [s.kind for s in d.layers] == ["window"] * 4 and d.layers[2].stage == 1
    assert d.gradcam_kind == "nhwc"


_ROOT = Path(vitlens.__file__).parent
_PROBES = re.compile(r"""getattr\(\s*\w+\s*,\s*["'](num_prefix_tokens|has_class_token|cls_token|blocks|norm1|layers)["']"""
                     r"""|\bmodel\.(num_prefix_tokens|has_class_token|cls_token|blocks|patch_embed|layers)\b"""
                     r"""|family\s*(==|!=|in\b)|["'](?i:swin)(v2)?["']|\.startswith\(\s*["']swin""")


def test_no_module_outside_capture_reads_model_structure_or_matches_family_names():
    offenders = []
    for path in sorted(_ROOT.rglob("*.py")):
        rel = path.relative_to(_ROOT)
        if rel.parts[0] in ("capture", "cli"):  # cli: the front end, installed as vitlens/cli
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PROBES.search(code):
                offenders.append(f"vitlens/{rel}:{i}: {line.strip()}")
    assert not offenders, "model knowledge outside vitlens/capture:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name,kwargs,path", [
    # one case per install that watches SDPA calls through generic.SdpaTap (BlocksAdapter,
    # the VisionTransformer pool head, CaiT class attention, SAM windows)
    ("vit_relpos_small_patch16_224", dict(img_size=32, depth=2), "blocks.1.attn"),
    ("vit_base_patch16_siglip_224", dict(img_size=32, depth=1, embed_dim=64, num_heads=4), "attn_pool"),
    ("cait_xxs24_224", dict(img_size=32, depth=1, depth_token_only=1), "blocks_token_only.0.attn"),
    ("samvit_base_patch16", dict(img_size=64, depth=2, embed_dim=64, num_heads=2, window_size=2,
                                 global_attn_indexes=(1,)), "blocks.0.attn"),
])
@pytest.mark.parametrize("calls", [0, 2])
def test_a_module_that_calls_attention_other_than_once_is_refused(name, kwargs, path, calls):
    """The SDPA tap records a module's one attention call; none or two are refused, never guessed."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4, **kwargs).eval()
    attn = model.get_submodule(path)
    forward = attn.forward
    attn.forward = (lambda *a, **k: a[0]) if calls == 0 else (lambda *a, **k: (forward(*a, **k), forward(*a, **k))[1])
    h, w = adapter_for(model).default_input_size()
    with pytest.raises(UnsupportedModelError, match=f"{re.escape(path)} called scaled_dot_product_attention "
                                                    f"{calls} times"):
        with torch.no_grad(), vitlens.capture(model):
            model(torch.randn(1, 3, h, w))
