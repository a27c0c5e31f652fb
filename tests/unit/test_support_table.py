"""scripts/make_support_table.py writes the generated support table (docs/support.md)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_support_table.py"


def test_the_script_writes_counts_and_reasons_for_a_small_pattern(tmp_path):
    out = tmp_path / "support.md"
    env = {**os.environ, "VITLENS_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, str(SCRIPT), "--pattern", "vit_*wee*", "--out", str(out)],
                   cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    text = out.read_text()
    # vit_wee and vit_pwee are recorded; the two differential-attention ones are refused
    assert "**2 of 4 architectures supported**, 2 refused." in text
    assert "| vision_transformer | 2 | 2 | VisionTransformer |" in text
    refused = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in refused] == ["vit_dpwee_patch16_reg1_gap_256",
                                                        "vit_dwee_patch16_reg1_gap_256"]
    assert all("differential attention" in line for line in refused)


def test_the_generated_page_is_in_the_docs_nav():
    root = SCRIPT.parents[1]
    assert "support.md" in (root / "mkdocs.yml").read_text()
    assert (root / "docs" / "support.md").read_text().startswith("# Supported models")
