"""``vitlens explore``: one page for an image, pages plus index.html for a folder, flag errors."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .helpers import assert_one_line_error, run

REPO = Path(__file__).resolve().parents[2]
CHELSEA = REPO / "examples" / "chelsea.jpg"


def _payload(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="vlx-[0-9a-f]+-data">(.*?)</script>',
                                text, re.S).group(1).replace("<\\/", "</"))


def test_one_image_writes_one_page(tmp_path):
    out = tmp_path / "page.html"
    res = run("explore", CHELSEA, "--model", "demo", "--out", out, "--layers", "0,-1", "--heads", "2",
              "--methods", "grad-rollout", "--top-k", "2")
    assert res.exit_code == 0, res.output + res.stderr
    assert f"wrote {out}" in res.stdout and "chelsea.jpg: " in res.stdout
    data = _payload(out)
    assert [ly["layer"] for ly in data["layers"]] == [0, 5] and data["layers"][0]["heads"] == [2]
    assert [m["name"] for m in data["maps"]] == ["rollout", "grad-rollout"] and len(data["classes"]) == 2


def test_folder_writes_pages_and_an_index(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(CHELSEA, src / "chelsea.jpg")
    shutil.copy(REPO / "examples" / "coffee.jpg", src / "sub" / "coffee.jpg")
    (src / "broken.jpg").write_bytes(b"not an image")
    res = run("explore", src, "--model", "demo", "--out", tmp_path / "out", "--layers", "-1")
    assert res.exit_code == 1, res.output
    assert "skipped broken.jpg" in res.stderr
    pages = sorted(p.name for p in (tmp_path / "out").glob("*.html"))
    assert pages == ["chelsea.html", "global.html", "index.html", "sub_coffee.html"]
    index = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert 'href="chelsea.html"' in index and 'href="sub_coffee.html"' in index and "broken.jpg" in index
    assert 'href="global.html"' in index and "global.html" in res.stdout
    assert _payload(tmp_path / "out" / "sub_coffee.html")["name"] == "sub/coffee.jpg"


def test_flag_errors_are_one_line(tmp_path):
    res = run("explore", CHELSEA, "--model", "demo", "--methods", "chefr", "--out", tmp_path / "a.html")
    assert res.exit_code == 2 and "Did you mean 'chefer'" in res.stderr
    res = run("explore", CHELSEA, "--model", "demo", "--layers", "x", "--out", tmp_path / "a.html")
    assert res.exit_code == 2 and "--layers" in res.stderr
    res = run("explore", REPO / "examples", "--model", "demo", "--out", tmp_path / "a.html")
    assert res.exit_code == 2 and "--out is a folder" in res.stderr
    assert_one_line_error(run("explore", CHELSEA, "--model", "demo", "--layers", "7", "--out", tmp_path / "a.html"),
                          "layer 7 is out of range")
    assert_one_line_error(run("explore", tmp_path / "missing", "--model", "demo"), "no such file or folder")
    assert not list(tmp_path.glob("*.html"))


def test_library_errors_name_this_commands_flags(tmp_path):
    line = assert_one_line_error(run("explore", CHELSEA, "--model", "demo", "--heads", "9",
                                     "--out", tmp_path / "a.html"), "head 9 is out of range")
    assert "--heads" in line and "`" not in line


def test_no_global_view_for_swin_says_why(tmp_path):
    import timm
    import torch

    from vitlens.explore import explore_folder

    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
                              embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=10).eval()
    res = explore_folder(model, [CHELSEA], tmp_path / "out", layers=[0])
    assert res.global_page is None and "VisionTransformer family" in res.global_note
    assert [p.name for _, p in res.pages] == ["chelsea.html"]
    assert not (tmp_path / "out" / "global.html").exists()
    res = run("explore", REPO / "examples", "--model", "demo", "--out", tmp_path / "o2", "--no-global-view")
    assert res.exit_code == 0 and not (tmp_path / "o2" / "global.html").exists()
