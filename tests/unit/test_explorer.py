"""The explorer's data (vitlens/explore.py) and page writer (vitlens/export/explorer.py), without a
browser: what is embedded equals what vitlens computes, the encoding's error bound, options and
errors. The page in a real browser: tests/browser."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import vitlens
from vitlens.explore import Explorer, explore, explorer_data
from vitlens.export.explorer import decode_array, encode_array, payload

from ..conftest import make_model

REPO = Path(__file__).resolve().parents[2]
CHELSEA = REPO / "examples" / "chelsea.jpg"


@pytest.fixture(scope="module")
def demo_data(demo):
    return explorer_data(demo, CHELSEA, methods=["chefer", "random"], top_k=3)


def _cache(demo):
    model, cfg = demo
    x = vitlens.preprocess(vitlens.load_image(CHELSEA), cfg).tensor[None]
    with torch.no_grad(), vitlens.capture(model) as cache:
        logits = model(x)
    return model, x, cache, logits


def test_u8row_encoding_error_is_within_half_a_level_of_the_row_maximum():
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.full(50, 0.3), size=(3, 50)).astype(np.float32)    # rows of probabilities
    a[0, 0] = 0.0                                                            # an all-zero row
    back = decode_array(encode_array(a, "u8row"))
    bound = a.max(axis=-1, keepdims=True) / 510 + 1e-8
    assert back.shape == a.shape and (np.abs(back - a) <= bound).all()
    assert (back[0, 0] == 0).all()
    with pytest.raises(ValueError, match="non-negative"):
        encode_array(-a, "u8row")
    h = decode_array(encode_array(a, "f16"))
    assert np.allclose(h, a, atol=1e-3) and h.dtype == np.float32
    i = decode_array(encode_array(np.array([[-1, 5], [7, 2 ** 20]]), "i32"))
    assert i.tolist() == [[-1, 5], [7, 2 ** 20]]


def test_embedded_data_is_what_vitlens_computes(demo, demo_data):
    model, x, cache, logits = _cache(demo)
    d = demo_data
    assert [ly.layer for ly in d.layers] == list(range(cache.num_layers))
    for ly in d.layers:
        assert np.allclose(ly.attention, cache.attention(ly.layer)[0].numpy(), atol=1e-6)
        assert np.allclose(ly.received, vitlens.attention_received(cache, ly.layer, head=None)[0].numpy(), atol=1e-6)
    assert np.allclose(d.stats["distance"], vitlens.mean_attention_distance(cache)[0].numpy())
    assert np.allclose(d.stats["entropy"], vitlens.attention_entropy(cache)[0].numpy())
    assert d.maps[0].name == "rollout" and np.allclose(d.maps[0].maps, vitlens.rollout(cache).numpy())
    probs = logits.softmax(-1)[0]
    top = probs.topk(3)
    assert [c["index"] for c in d.classes] == top.indices.tolist()
    assert [c["name"] for c in d.classes] == [vitlens.class_names(model)[i] for i in top.indices.tolist()]
    chefer = d.maps[1]
    assert chefer.classes == top.indices.tolist() and chefer.maps.shape == (3, 8, 8)
    for k, t in enumerate(chefer.classes):
        assert np.allclose(chefer.maps[k], vitlens.explain(model, x, "chefer", target=t)[0].numpy(), atol=1e-5)
    assert d.maps[2].classes is None and d.maps[2].maps.shape == (1, 8, 8)      # random: class-agnostic
    # the box is the one the overlays use
    assert d.box == vitlens.preprocess(vitlens.load_image(CHELSEA), demo[1]).box


def test_layers_and_heads_choose_what_the_page_holds(demo):
    d = explorer_data(demo, CHELSEA, layers=[0, -1], heads=[1, 3])
    assert [ly.layer for ly in d.layers] == [0, 5]
    assert all(ly.heads == [1, 3] and ly.attention.shape[0] == 2 for ly in d.layers)
    p = payload(d)
    assert p["stats"]["distance"][1] == [round(float(d.stats["distance"][5, h]), 5) for h in (1, 3)]
    with pytest.raises(ValueError, match=r"layer 9 is out of range for this 6-layer model; valid `layers` are 0\.\.5"):
        explorer_data(demo, CHELSEA, layers=[9])
    with pytest.raises(ValueError, match="head"):
        explorer_data(demo, CHELSEA, heads=[99])


def test_page_is_self_contained_and_explorers_have_their_own_ids(demo_data):
    ex = Explorer(demo_data)
    page = ex.html()
    assert page.startswith("<!doctype html>") and "Content-Security-Policy" in page and "default-src 'none'" in page
    # no URL the browser could fetch: the only http string is the SVG namespace
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    ids = {re.search(r'id="(vlx-[0-9a-f]+)"', ex._repr_html_()).group(1) for _ in range(3)}
    assert len(ids) == 3
    frag = ex._repr_html_()
    assert "<html" not in frag and "vitlensExplorer(root" in frag
    # CSS of the fragment is scoped under .vlx
    css = re.search(r"<style>(.*?)</style>", frag, re.S).group(1)
    selectors = [s.strip() for rule in re.findall(r"([^{}]+)\{", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
                 for s in rule.split(",")]
    assert selectors and all(s.startswith(".vlx") for s in selectors), selectors


def test_save_precision_and_options(demo_data, tmp_path):
    small = Explorer(demo_data).save(tmp_path / "a.html").stat().st_size
    big = Explorer(demo_data, precision="float16").save(tmp_path / "b.html").stat().st_size
    assert big > small
    p = payload(demo_data, precision="float16", max_image_side=100)
    assert max(p["image"]["w"], p["image"]["h"]) == 100
    scale = 100 / max(demo_data.image.size)
    assert np.allclose(p["box"], np.array(demo_data.box) * scale)
    with pytest.raises(ValueError, match="`precision` must be one of"):
        Explorer(demo_data, precision="int4")
    with pytest.raises(ValueError, match="colormap"):
        Explorer(demo_data, colormap="jett")
    with pytest.raises(ValueError, match=r"\.html"):
        Explorer(demo_data).save(tmp_path / "a.png")


def test_explore_accepts_arrays_and_refuses_tensors(demo):
    from PIL import Image

    arr = np.asarray(Image.open(CHELSEA).convert("RGB"))
    ex = explore(demo, arr, layers=-1, name="cat")
    assert ex.data.name == "cat" and ex.data.image.size == (arr.shape[1], arr.shape[0])
    assert "cat" in repr(ex)
    with pytest.raises(TypeError, match="original photo"):
        explore(demo, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="unknown explanation method"):
        explore(demo, CHELSEA, methods=["chefr"])


def test_swin_layers_carry_window_geometry():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
                              embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=10).eval()
    d = explorer_data(model, CHELSEA)
    assert d.windowed and d.prefix_names == ()
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(vitlens.preprocess(d.image, vitlens.models.data_config_of(model)).tensor[None])
    for ly in d.layers:
        wl = cache.layout_of(ly.layer)
        assert ly.grid == wl.grid_size and ly.patch == wl.patch_size and len(ly.heads) == cache.layer_heads[ly.layer]
        assert (ly.token_index == wl.token_index().numpy()).all()
        # placing every window position's row at its token reproduces dense_attention
        dense = np.zeros((len(ly.heads), wl.num_tokens, wl.num_tokens))
        for w in range(wl.num_windows):
            for p, t in enumerate(ly.token_index[w]):
                if t >= 0:
                    keys = ly.token_index[w]
                    dense[:, t, keys[keys >= 0]] = ly.attention[w, :, p, keys >= 0].T
        assert np.allclose(dense, cache.dense_attention(ly.layer)[0].numpy(), atol=1e-6)
        for w in range(wl.num_windows):           # window of each stage token, for drawing the windows
            keys = ly.token_index[w]
            assert (ly.window_id[keys[keys >= 0]] == w).all()
    assert [m.grid for m in d.maps] == [d.layers[0].grid]


@pytest.mark.slow
def test_vit_b16_page_at_224_px_stays_under_10_mb(tmp_path):
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    path = explore(model, CHELSEA).save(tmp_path / "vitb.html")
    size = path.stat().st_size
    print(f"ViT-B/16 224 px page: {size / 1e6:.2f} MB")
    assert size < 10e6
    smaller = explore(model, CHELSEA, layers=[0, 5, 11]).save(tmp_path / "three.html").stat().st_size
    assert smaller < size / 3


@pytest.mark.parametrize("case", ["gap_no_cls", "deit_distilled", "dinov2_reg4", "non_square"])
def test_token_layouts_reach_the_page(case):
    model, _ = make_model(case)
    d = explorer_data(model, CHELSEA, top_k=2)
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(vitlens.preprocess(d.image, vitlens.models.data_config_of(model)).tensor[None])
    layout = cache.layout
    assert d.prefix_names == layout.prefix_names and d.input_size == layout.input_size
    ly = d.layers[-1]
    assert ly.grid == layout.grid_size and ly.attention.shape[-1] == layout.num_tokens
    assert np.allclose(ly.attention, cache.attention(-1)[0].numpy(), atol=1e-6)
    p = payload(d)
    assert p["prefix"] == list(layout.prefix_names) and p["layers"][-1]["grid"] == list(layout.grid_size)
