"""Headless Chromium for the explorer tests, driven through WebDriver (selenium + chromedriver).

The browser is the system's (Debian: ``apt-get install -y chromium chromium-driver``; .ci/run
installs it). Where it or selenium is missing, the tests skip with a reason that says how to
install them. Selenium never downloads a driver here: both paths are given explicitly and
``SE_OFFLINE`` is set.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

INSTALL = ("install Chromium and its WebDriver with `apt-get install -y chromium chromium-driver` "
           "(Debian/Ubuntu; .ci/run does this) and selenium with `pip install -e '.[dev]'`")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--window-size=1400,1100",
         "--force-device-scale-factor=1"]


def find_browser() -> tuple[str, str] | str:
    """``(chromium, chromedriver)`` paths, or the reason they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed; {INSTALL}"
    browser = os.environ.get("VITLENS_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
    driver = os.environ.get("VITLENS_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser:
        return f"no Chromium browser found (looked for chromium, chromium-browser, google-chrome); {INSTALL}"
    if not driver:
        return f"no chromedriver found next to Chromium {browser}; {INSTALL}"
    return browser, driver


def start(tmp: Path):
    """A headless Chromium session with console and network logging, downloads into ``tmp/downloads``."""
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    browser, driver_path = found
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in FLAGS + [f"--user-data-dir={tmp / 'profile'}"]:
        opts.add_argument(flag)
    opts.binary_location = browser
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    downloads = tmp / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    try:
        drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    except Exception as e:  # a browser that cannot start here is a broken install, not a pass
        pytest.fail(f"Chromium ({browser}, driver {driver_path}) did not start: {type(e).__name__}: {e}")
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.downloads = downloads
    return drv


def open_page(drv, url: str, root_selector: str = ".vlx") -> dict[str, Any]:
    """Navigate to ``url`` and wait until every explorer on it has drawn.

    Returns ``{"console": [...], "requests": [...]}`` for what happened during the load.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get_log("browser")
    drv.get_log("performance")            # drop what the start page did
    drv.get(url)
    WebDriverWait(drv, 60).until(lambda d: d.execute_script(
        "var r = document.querySelectorAll(arguments[0]); if (!r.length) return false;"
        "for (var i = 0; i < r.length; i++) if (r[i].getAttribute('data-ready') !== '1') return false; return true;",
        root_selector))
    return {"console": drv.get_log("browser"), "requests": network_requests(drv)}


def network_requests(drv) -> list[str]:
    out = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            out.append(msg["params"]["request"]["url"])
    return out


def page_payload(html_text: str, index: int = 0) -> dict[str, Any]:
    """The JSON payload embedded in a page (the ``index``-th explorer), parsed in Python."""
    found = re.findall(r'<script type="application/json" id="(vlx-[0-9a-f]+)-data">(.*?)</script>', html_text, re.S)
    uid, text = found[index]
    data = json.loads(text.replace("<\\/", "</"))
    data["_uid"] = uid
    return data


def decode(enc: dict[str, Any]) -> np.ndarray:
    """An independent decoder of the page's array encoding (not vitlens' own)."""
    raw = base64.b64decode(enc["b64"])
    shape = tuple(enc["shape"])
    if enc["dtype"] == "u8row":
        q = np.frombuffer(raw, np.uint8).reshape(-1, shape[-1]).astype(np.float64)
        s = np.frombuffer(base64.b64decode(enc["scale"]), "<f4").astype(np.float64)
        return (q * s[:, None]).reshape(shape)
    dt = {"f16": "<f2", "f32": "<f4", "i32": "<i4"}[enc["dtype"]]
    return np.frombuffer(raw, dt).reshape(shape).astype(np.float64 if enc["dtype"] != "i32" else np.int64)


class Page:
    """One explorer on the open page: geometry from its payload, pixels from its canvas."""

    def __init__(self, drv, data: dict[str, Any]):
        self.drv, self.data, self.uid = drv, data, data["_uid"]
        self.lut = np.array(data["lut"], dtype=np.int64).reshape(256, 3)
        self.scale = float(self.js("return root.vitlens.canvasScale"))

    def js(self, body: str, *args: Any) -> Any:
        return self.drv.execute_script(f"var root = document.getElementById('{self.uid}');\n{body}", *args)

    def el(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.drv.find_element(By.CSS_SELECTOR, f"#{self.uid} {selector}")

    @property
    def canvas(self):
        return self.el("canvas[data-role=main]")

    def state(self) -> dict[str, Any]:
        return self.js("var s = root.vitlens.state; return {tab: s.tab, mode: s.mode, li: s.li, head: s.head, "
                       "cls: s.cls, alpha: s.alpha};")

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        """Model-input pixel -> canvas pixel (the box maps the input onto the photo)."""
        (h_in, w_in), b = self.data["input"], self.data["box"]
        return ((b[0] + x * (b[2] - b[0]) / w_in) * self.scale, (b[1] + y * (b[3] - b[1]) / h_in) * self.scale)

    def cell_center(self, grid, patch, r: int, c: int) -> tuple[float, float]:
        x0, y0 = self.to_canvas(c * patch[1], r * patch[0])
        x1, y1 = self.to_canvas((c + 1) * patch[1], (r + 1) * patch[0])
        return (x0 + x1) / 2, (y0 + y1) / 2

    def hover_canvas(self, cx: float, cy: float) -> None:
        """Move the mouse over canvas pixel (cx, cy), no click."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.drv).move_to_element_with_offset(self.canvas, *self._offset(cx, cy)).perform()

    def _offset(self, cx: float, cy: float) -> tuple[int, int]:
        rect = self.js("var r = root.querySelector('canvas[data-role=main]').getBoundingClientRect();"
                       "return [r.width, r.height];")
        cw, ch = self.js("var c = root.querySelector('canvas[data-role=main]'); return [c.width, c.height];")
        return int(round(cx * rect[0] / cw - rect[0] / 2)), int(round(cy * rect[1] / ch - rect[1] / 2))

    def click_canvas(self, cx: float, cy: float) -> None:
        """A real mouse click at canvas pixel (cx, cy)."""
        from selenium.webdriver.common.action_chains import ActionChains

        rect = self.js("var r = root.querySelector('canvas[data-role=main]').getBoundingClientRect();"
                       "return [r.width, r.height];")
        cw, ch = self.js("var c = root.querySelector('canvas[data-role=main]'); return [c.width, c.height];")
        ox = cx * rect[0] / cw - rect[0] / 2
        oy = cy * rect[1] / ch - rect[1] / 2
        ActionChains(self.drv).move_to_element_with_offset(self.canvas, int(round(ox)), int(round(oy))).click().perform()
        # move off the canvas so hovering does not replace the clicked patch
        ActionChains(self.drv).move_to_element(self.el(".vlx-title")).perform()

    def pixels(self, points) -> np.ndarray:
        """RGB of the main canvas at canvas pixels ``points`` ([(x, y), ...])."""
        out = self.js("var c = root.querySelector('canvas[data-role=main]').getContext('2d');"
                      "return arguments[0].map(function (p) { var d = c.getImageData(Math.floor(p[0]), Math.floor(p[1]), 1, 1).data;"
                      " return [d[0], d[1], d[2]]; });", [list(p) for p in points])
        return np.array(out, dtype=np.int64)

    def map_pixels(self, grid, patch) -> np.ndarray:
        """The colour at the centre of every cell of ``grid``, ``[gh*gw, 3]`` (row-major)."""
        pts = [self.cell_center(grid, patch, r, c) for r in range(grid[0]) for c in range(grid[1])]
        return self.pixels(pts)

    def expected_levels(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        lo, hi = v.min(), v.max()
        return np.zeros(v.shape, np.int64) if hi <= lo else np.rint((v - lo) / (hi - lo) * 255).astype(np.int64)

    def assert_shows(self, values: np.ndarray, grid, patch, tol_levels: int = 1, skip: set[int] | None = None) -> None:
        """The canvas (drawn at opacity 1) shows ``values`` min-max scaled through the colormap:
        at every cell centre the colour is the LUT entry of the expected level, give or take
        ``tol_levels`` (float rounding, quantised storage)."""
        got = self.map_pixels(grid, patch)
        want = self.expected_levels(values)
        bad = []
        for i, (px, lv) in enumerate(zip(got, want)):
            if skip and i in skip:
                continue
            cand = self.lut[max(0, lv - tol_levels):min(255, lv + tol_levels) + 1]
            if not (np.abs(cand - px).max(axis=1) <= 1).any():
                nearest = int(np.abs(self.lut - px).sum(axis=1).argmin())
                bad.append((i, int(lv), nearest, px.tolist()))
        assert not bad, f"{len(bad)} of {len(want)} cells differ (cell, expected level, nearest level, rgb): {bad[:8]}"


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
