"""The attention explorer in a real browser (headless Chromium through WebDriver).

Pages are built with the bundled demo ViT and a tiny random-init Swin; every check of what
the canvas shows decodes the page's embedded arrays in Python with an independent decoder
(``_chromium.decode``) or recomputes the map with vitlens from the model, and compares
colours at cell centres with the page's colormap. Skips (with how to install) when no
Chromium is installed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vitlens
from vitlens.explore import explore

from ._chromium import Page, decode, find_browser, open_page, page_payload, png_pixels, start

REPO = Path(__file__).resolve().parents[2]
CHELSEA = REPO / "examples" / "chelsea.jpg"

_found = find_browser()
pytestmark = pytest.mark.skipif(isinstance(_found, str), reason=_found if isinstance(_found, str) else "")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    drv = start(tmp_path_factory.mktemp("chromium"))
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory, demo):
    model, cfg = demo
    ex = explore((model, cfg), CHELSEA, methods=["chefer"], top_k=3)
    path = ex.save(tmp_path_factory.mktemp("pages") / "demo.html")
    return path, ex


def _load(driver, path: Path, index: int = 0) -> tuple[Page, dict]:
    info = open_page(driver, path.as_uri())
    page = Page(driver, page_payload(path.read_text(encoding="utf-8"), index))
    page.js("var a = root.querySelector('input[data-role=alpha]'); a.value = '1';"
            "a.dispatchEvent(new Event('input'));")      # opacity 1: the canvas shows the colormap itself
    return page, info


def _row(data: dict, li: int, head, q: int, mode: str = "row") -> np.ndarray:
    """The attention over patch cells the page should show, from its embedded arrays."""
    ly = data["layers"][li]
    a = decode(ly["attn"])                                        # [H, T, T]
    P = len(data["prefix"])
    if mode == "row":
        rows = a[:, P + q, P:]
    elif mode == "cls":
        rows = a[:, data["prefix"].index("cls"), P:]
    else:
        rows = a[:, P:, P + q]
    if head == "mean":
        return rows.mean(0)
    if head == "max":
        return rows.max(0)
    return rows[head]


def test_page_loads_from_file_without_console_errors_or_network(driver, demo_page):
    path, _ = demo_page
    page, info = _load(driver, path)
    assert not [e for e in info["console"] if e["level"] in ("SEVERE", "WARNING")], info["console"]
    # only the page itself and its inline data: URIs, nothing over the network
    assert info["requests"], "the performance log recorded nothing: the check would be empty"
    assert all(u == path.as_uri() or u.startswith("data:") for u in info["requests"]), info["requests"]
    assert path.as_uri() in info["requests"]
    assert page.state()["tab"] == "attention"
    assert page.el("canvas[data-role=main]").size["width"] > 100


def test_two_clicked_patches_draw_their_own_attention_rows(driver, demo_page, demo):
    path, ex = demo_page
    page, _ = _load(driver, path)
    data = page.data
    li = len(data["layers"]) - 1
    ly = data["layers"][li]
    grid, patch = ly["grid"], ly["patch"]
    shown = []
    for (r, c) in [(1, 2), (5, 6)]:
        page.click_canvas(*page.cell_center(grid, patch, r, c))
        q = r * grid[1] + c
        expected = _row(data, li, "mean", q)
        page.assert_shows(expected, grid, patch, skip={q})   # the selected cell is outlined
        shown.append(page.map_pixels(grid, patch))
        assert page.js("return root.vitlens.currentMap().cell") == q
    assert (shown[0] != shown[1]).any(axis=1).sum() > grid[0] * grid[1] // 4, "two patches, (nearly) the same map"

    # the embedded rows are the model's attention (uint8 per row: error <= max_row / 510)
    model, cfg = demo
    x = vitlens.preprocess(vitlens.load_image(CHELSEA), cfg).tensor[None]
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    true = cache.attention(ly["layer"])[0].double().numpy()
    emb = decode(ly["attn"])
    assert np.abs(emb - true).max() <= true.max(axis=-1, keepdims=True).max() / 510 + 1e-7


def test_hovering_previews_a_patch_and_leaving_returns_to_the_clicked_one(driver, demo_page):
    path, _ = demo_page
    page, _ = _load(driver, path)
    data = page.data
    li = len(data["layers"]) - 1
    grid, patch = data["layers"][li]["grid"], data["layers"][li]["patch"]
    page.click_canvas(*page.cell_center(grid, patch, 6, 1))
    page.hover_canvas(*page.cell_center(grid, patch, 2, 5))
    q = 2 * grid[1] + 5
    assert page.js("return root.vitlens.currentMap().cell") == q
    page.assert_shows(_row(data, li, "mean", q), grid, patch, skip={q})
    page.el(".vlx-title").click()                                             # leave the canvas
    q = 6 * grid[1] + 1
    assert page.js("return root.vitlens.currentMap().cell") == q
    page.assert_shows(_row(data, li, "mean", q), grid, patch, skip={q})


def test_column_and_cls_modes(driver, demo_page):
    path, _ = demo_page
    page, _ = _load(driver, path)
    data = page.data
    li = len(data["layers"]) - 1
    grid, patch = data["layers"][li]["grid"], data["layers"][li]["patch"]
    page.click_canvas(*page.cell_center(grid, patch, 3, 3))
    q = 3 * grid[1] + 3
    page.el("input[data-mode=col]").click()
    page.assert_shows(_row(data, li, "mean", q, "col"), grid, patch, skip={q})
    page.el("input[data-mode=cls]").click()
    page.assert_shows(_row(data, li, "mean", 0, "cls"), grid, patch)


def test_layer_slider_and_head_selector_change_the_map(driver, demo_page):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    path, _ = demo_page
    page, _ = _load(driver, path)
    data = page.data
    last = len(data["layers"]) - 1
    grid, patch = data["layers"][last]["grid"], data["layers"][last]["patch"]
    page.click_canvas(*page.cell_center(grid, patch, 4, 2))
    q = 4 * grid[1] + 2
    before = page.map_pixels(grid, patch)

    slider = page.el("input[data-role=layer]")
    slider.send_keys(Keys.ARROW_LEFT)                      # keyboard on the range input: one layer down
    assert page.state()["li"] == last - 1
    page.assert_shows(_row(data, last - 1, "mean", q), grid, patch, skip={q})
    after_layer = page.map_pixels(grid, patch)
    assert (after_layer != before).any()

    Select(page.el("select[data-role=head]")).select_by_value("1")
    assert page.state()["head"] == 1
    page.assert_shows(_row(data, last - 1, 1, q), grid, patch, skip={q})
    assert (page.map_pixels(grid, patch) != after_layer).any()
    Select(page.el("select[data-role=head]")).select_by_value("max")
    page.assert_shows(_row(data, last - 1, "max", q), grid, patch, skip={q})

    # every head side by side; clicking one selects it
    Select(page.el("select[data-role=head]")).select_by_value("all")
    figures = page.js("return root.querySelectorAll('[data-role=multi] figure').length")
    assert figures == len(data["layers"][last - 1]["heads"])
    page.el("[data-role=multi] figure[data-head='2']").click()
    assert page.state()["head"] == 2


def test_head_statistics_chart_selects_layer_and_head(driver, demo_page):
    path, _ = demo_page
    page, _ = _load(driver, path)
    data = page.data
    dots = page.js("return root.querySelectorAll('svg[data-stat=distance] circle').length")
    assert dots == sum(len(ly["heads"]) for ly in data["layers"])
    page.el("svg[data-stat=distance] circle[data-layer='1'][data-head='3']").click()
    assert page.state()["li"] == 1 and page.state()["head"] == 3
    # the dot sits at the head's statistic: higher value, higher on the chart
    ys = page.js("return Array.from(root.querySelectorAll('svg[data-stat=entropy] circle[data-layer=\"2\"]'))"
                 ".map(function (c) { return [parseInt(c.getAttribute('data-head')), parseFloat(c.getAttribute('cy'))]; });")
    vals = data["stats"]["entropy"][2]
    order_by_value = sorted(range(len(vals)), key=lambda h: vals[h])
    order_by_height = sorted((h for h, _ in ys), key=lambda h: -dict(ys)[h])
    assert order_by_value == order_by_height


def test_rollout_received_and_class_specific_tabs(driver, demo_page, demo):
    from selenium.webdriver.support.ui import Select

    path, ex = demo_page
    page, _ = _load(driver, path)
    data = page.data
    model, cfg = demo
    x = vitlens.preprocess(vitlens.load_image(CHELSEA), cfg).tensor[None]
    grid, patch = data["layers"][0]["grid"], data["layers"][0]["patch"]

    page.el("button[data-tab=m\\:0]").click()                  # rollout, recomputed here by vitlens
    assert page.state()["tab"] == "m:0"
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    page.assert_shows(vitlens.rollout(cache)[0].numpy(), grid, patch)

    page.el("button[data-tab=received]").click()
    li = page.state()["li"]
    page.assert_shows(vitlens.attention_received(cache, layer=data["layers"][li]["layer"])[0].numpy(), grid, patch)

    page.el("button[data-tab=m\\:1]").click()                  # chefer, for the second predicted class
    Select(page.el("select[data-role=class]")).select_by_value("1")
    target = data["classes"][1]["index"]
    page.assert_shows(vitlens.explain(model, x, "chefer", target=target)[0].numpy(), grid, patch)
    other = vitlens.explain(model, x, "chefer", target=data["classes"][0]["index"])[0].numpy()
    assert not np.allclose(other, vitlens.explain(model, x, "chefer", target=target)[0].numpy())


def test_png_export_saves_the_current_view(driver, demo_page):
    path, _ = demo_page
    page, _ = _load(driver, path)
    for f in driver.downloads.glob("*"):
        f.unlink()
    page.el("button[data-role=export]").click()
    deadline = time.time() + 30
    files = []
    while time.time() < deadline:
        files = [f for f in driver.downloads.glob("*.png")]
        if files and not list(driver.downloads.glob("*.crdownload")):
            break
        time.sleep(0.2)
    assert len(files) == 1, list(driver.downloads.iterdir())
    assert files[0].name.startswith("chelsea_attention_row_L")
    png = png_pixels(files[0].read_bytes())
    w, h = page.js("var c = root.querySelector('canvas[data-role=main]'); return [c.width, c.height];")
    assert png.shape == (h, w, 3)
    pts = [(5, 5), (w // 2, h // 2), (w - 3, h - 3), (w // 3, 2 * h // 3)]
    assert (page.pixels(pts) == np.array([png[y, x] for x, y in pts])).all()


def _tiny_swin():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
                              embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=10).eval()
    with torch.no_grad():
        for st in model.layers:
            for blk in st.blocks:
                blk.attn.qkv.weight.mul_(4.0)
                blk.attn.relative_position_bias_table.normal_(0, 1.0)
    return model


def test_swin_page_shows_stage_coordinates_with_the_shift_undone(driver, tmp_path):
    model = _tiny_swin()
    cfg = vitlens.models.data_config_of(model)
    ex = explore((model, cfg), CHELSEA)
    path = ex.save(tmp_path / "swin.html")
    page, info = _load(driver, path)
    assert not [e for e in info["console"] if e["level"] == "SEVERE"], info["console"]
    data = page.data
    assert data["windowed"] and page.js("return root.querySelector('input[data-mode=cls]').disabled")

    x = vitlens.preprocess(vitlens.load_image(CHELSEA), cfg).tensor[None]
    with torch.no_grad(), vitlens.capture(model) as cache:
        model(x)
    from selenium.webdriver.common.keys import Keys

    slider = page.el("input[data-role=layer]")
    slider.send_keys(Keys.HOME)
    checked = 0
    for li, ly in enumerate(data["layers"]):
        if li:
            slider.send_keys(Keys.ARROW_RIGHT)
        assert page.state()["li"] == li
        wl = cache.layout_of(ly["layer"])
        if not (wl.shifted or li == 0 or wl.grid_size != tuple(data["layers"][0]["grid"])):
            continue
        grid, patch = ly["grid"], ly["patch"]
        r, c = grid[0] - 1, grid[1] // 2                      # an edge token: the shifted window wraps around
        page.click_canvas(*page.cell_center(grid, patch, r, c))
        q = r * grid[1] + c
        dense = cache.dense_attention(ly["layer"])[0].double().numpy()        # [H, N, N], vitlens' own placement
        page.assert_shows(dense[:, q].mean(0), grid, patch, skip={q})
        if wl.shifted:
            # the row is zero outside the query's window and shift-mask region
            ok = wl.allowed_pairs()
            idx = wl.token_index()
            w, p = [(int(a), int(b)) for a, b in zip(*np.nonzero(idx.numpy() == q))][0]
            allowed = {int(t) for t, a in zip(idx[w].tolist(), ok[w, p].tolist()) if a and t >= 0}
            assert set(np.nonzero(dense[:, q].sum(0))[0].tolist()) <= allowed
        checked += 1
    assert checked >= 3, "the loop must check the first stage, a shifted block and a coarser stage"
    # windows are drawn (layer 0: 16x16 stage grid in 4x4 windows): a line across the image
    # crosses the window boundaries, which disappear when the option is off
    slider.send_keys(Keys.HOME)
    w, h = page.js("var c = root.querySelector('canvas[data-role=main]'); return [c.width, c.height];")
    line = [(x, h // 3) for x in range(w)]
    before = page.pixels(line)
    page.el("input[data-role=windows]").click()
    after = page.pixels(line)
    changed = np.nonzero((before != after).any(axis=1))[0]
    assert 3 <= len(changed) <= 40, changed            # a few thin lines, not the whole map
    assert (before[changed] >= 200).all(axis=1).any()  # drawn in white


def test_global_view_points_open_their_image_and_patch(driver, demo, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    from vitlens.explore import explore_folder

    res = explore_folder(demo, [CHELSEA, REPO / "examples" / "coffee.jpg"], tmp_path / "out", layers=[2, 5])
    info = open_page(driver, res.global_page.as_uri())
    assert not [e for e in info["console"] if e["level"] in ("SEVERE", "WARNING")], info["console"]
    assert all(u == res.global_page.as_uri() or u.startswith("data:") for u in info["requests"]), info["requests"]
    text = res.global_page.read_text(encoding="utf-8")
    data = page_payload(text)
    uid = data["_uid"]
    js = lambda body: driver.execute_script(f"var root = document.getElementById('{uid}');" + body)  # noqa: E731
    Select(driver.find_element("css selector", f"#{uid} select[data-role=head]")).select_by_value("2")
    T, M = data["tokens"], 2 * data["tokens"]
    scr = np.array(js("return root.vitlens.screen();")).reshape(2 * M, 2)
    # the embedded coordinates are drawn: screen positions are an affine image of the data
    emb = decode(data["layers"][1]["emb"])[2].reshape(2 * M, 2)
    for axis, flip in ((0, 1), (1, -1)):
        slope, icpt = np.polyfit(emb[:, axis], scr[:, axis], 1)
        assert np.sign(slope) == flip and np.allclose(emb[:, axis] * slope + icpt, scr[:, axis], atol=0.05)
    # a key of the second image, patch (3, 4), isolated enough to be the nearest point to a click there
    P = len(data["prefix"])
    gw = data["grid"][1]
    candidates = [1 * T + P + r * gw + c for r in range(8) for c in range(8)]
    d = np.linalg.norm(scr[None, :, :] - scr[[M + i for i in candidates]][:, None, :], axis=-1)
    d[np.arange(len(candidates)), [M + i for i in candidates]] = np.inf
    pick = candidates[int(d.min(axis=1).argmax())]
    r, c = divmod(pick - T - P, gw)
    canvas = driver.find_element("css selector", f"#{uid} canvas[data-role=scatter]")
    x, y = scr[M + pick]
    ActionChains(driver).move_to_element_with_offset(canvas, int(round(x - 280)), int(round(y - 280))).click().perform()
    picked = driver.find_element("css selector", f"#{uid} [data-role=picked]").text
    assert f"key of patch ({r}, {c})" in picked and "coffee.jpg" in picked and "layer 5, head 2" in picked
    href = driver.find_element("css selector", f"#{uid} a[data-role=open]").get_attribute("href")
    assert href.endswith(f"coffee.html#layer=5&head=2&mode=col&patch={r},{c}"), href

    # the link opens the image's explorer at that layer, head, mode and patch
    page_path = tmp_path / "out" / "coffee.html"
    open_page(driver, href)
    page = Page(driver, page_payload(page_path.read_text(encoding="utf-8")))
    state = page.state()
    layer_pos = [ly["layer"] for ly in page.data["layers"]].index(5)
    assert state["li"] == layer_pos and state["head"] == 2 and state["mode"] == "col"
    grid = page.data["layers"][layer_pos]["grid"]
    assert page.js("return root.vitlens.currentMap().cell") == r * grid[1] + c
