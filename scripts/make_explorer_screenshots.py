"""Regenerate the explorer screenshots in docs/images (docs/explorer.md) with headless Chromium.

    python scripts/make_explorer_screenshots.py

Needs Chromium and chromedriver (``apt-get install -y chromium chromium-driver``) and selenium.
ViT: the bundled demo model on examples/chelsea.jpg, a patch on the cat's eye clicked, every
head side by side. Global view: the four example images, layer 5, coloured by patch position,
a key picked. Swin: a random-init ``swin_tiny_patch4_window7_224`` (no pretrained weights
offline; q/k sharpened so attention has structure) at a shifted block of the first stage.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def driver(tmp: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
                 "--window-size=1180,1000", "--force-device-scale-factor=1"]:
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def shoot(drv, page: Path, out: Path, script: str) -> None:
    from selenium.webdriver.common.by import By

    drv.get(page.as_uri())
    for _ in range(100):
        if drv.execute_script("var r = document.querySelector('.vlx'); return r && r.getAttribute('data-ready')"):
            break
        time.sleep(0.1)
    drv.execute_script("var root = document.querySelector('.vlx'); var st = root.vitlens.state;\n" + script +
                       "\nroot.vitlens.render();")
    drv.find_element(By.CSS_SELECTOR, ".vlx").screenshot(str(out))
    print("wrote", out)


def main() -> None:
    import timm

    import vitlens

    tmp = Path(tempfile.mkdtemp())
    images = REPO / "docs" / "images"
    chelsea = REPO / "examples" / "chelsea.jpg"
    vit = vitlens.explore("demo", chelsea, methods=["chefer"]).save(tmp / "vit.html")
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    with torch.no_grad():
        for stage in swin.layers:
            for blk in stage.blocks:
                blk.attn.qkv.weight.mul_(3.0)
    swin_page = vitlens.explore(swin, chelsea, layers=[0, 1, 2, 3, 11]).save(tmp / "swin.html")
    from vitlens.explore import explore_folder

    folder = explore_folder("demo", REPO / "examples", tmp / "folder", layers=[5])
    drv = driver(tmp)
    try:
        drv.get(folder.global_page.as_uri())
        time.sleep(1)
        drv.execute_script("var r = document.querySelector('.vlx'); r.vitlens.state.color = 'position';"
                           "r.querySelector('select[data-role=color]').value = 'position'; r.vitlens.render();"
                           "r.vitlens.pick(1, 2 * 65 + 1 + 3 * 8 + 4);")
        from selenium.webdriver.common.by import By

        drv.find_element(By.CSS_SELECTOR, ".vlx").screenshot(str(images / "explorer_global.png"))
        print("wrote", images / "explorer_global.png")
        # input 32 px, patch 4: the cat's left eye is near input (11, 13)
        shoot(drv, vit, images / "explorer_vit.png", "st.li = 3; st.head = 'all'; st.sel = [11, 13];")
        shoot(drv, swin_page, images / "explorer_swin.png", "st.li = 1; st.head = 'mean'; st.sel = [118, 104];")
    finally:
        drv.quit()


if __name__ == "__main__":
    sys.exit(main())
