"""The three parts shape bias is split into (issue #15): the stimulus dataset
(vitlens.data.cue_conflict), the pure protocol over (probabilities, labels)
(vitlens.analysis.shape_bias.decide / tally), and the texture-attention analysis
(vitlens.analysis.texture_attention). Each is checked on its own, against hand counts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitlens.analysis.shape_bias import CategoryMapping, ImageDecision, decide, tally
from vitlens.analysis.texture_attention import summarise_texture_attention
from vitlens.data.cue_conflict import CUE_CONFLICT_CATEGORIES, scan_stimuli, stimulus_batches, texture_label
from vitlens.errors import VitlensError

REPO = Path(__file__).resolve().parents[2]
STIMULI = REPO / "tests" / "data" / "cue-conflict"


def test_scan_lists_every_stimulus_with_its_labels():
    scan = scan_stimuli(STIMULI, set(CUE_CONFLICT_CATEGORIES), "imagenet16")
    pngs = sorted(STIMULI.glob("*/*.png"))
    assert [s.rel for s in scan.stimuli] == [f"{p.parent.name}/{p.name}" for p in pngs]
    for s in scan.stimuli:
        assert s.shape == s.path.parent.name and s.texture == texture_label(s.path.name)
    assert scan.folders == {p.parent.name for p in pngs}
    assert any(k.path == "ATTRIBUTION.md" for k in scan.skipped)
    with pytest.raises(VitlensError, match="is not a category of mapping 'tiny'"):
        scan_stimuli(STIMULI, {"cat"}, "tiny")


def test_stimulus_batches_decode_in_order_and_report_unreadable(tmp_path):
    (tmp_path / "cat").mkdir()
    good = sorted(STIMULI.glob("*/*.png"), key=lambda p: p.name)[:3]
    for p in good:
        (tmp_path / "cat" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "cat" / "cat9-dog9.png").write_bytes(b"not a png")      # sorts after the good ones
    scan = scan_stimuli(tmp_path, set(CUE_CONFLICT_CATEGORIES), "imagenet16")
    assert len(scan.stimuli) == 4
    skipped = list(scan.skipped)
    out = list(stimulus_batches(scan.stimuli, lambda im: torch.zeros(3, 2, 2), 2, skipped))
    names = [f"cat/{p.name}" for p in good]
    assert [[s.rel for s in b] for b, _ in out] == [names[:2], names[2:]]
    assert [x.shape[0] for _, x in out] == [2, 1]
    assert [k.path for k in skipped] == ["cat/cat9-dog9.png"]


def test_decide_follows_the_protocol_on_hand_made_probabilities():
    mapping = CategoryMapping("m", {"cat": (0, 1), "dog": (2,), "car": (3, 4)})
    probs = np.array([
        [0.30, 0.30, 0.20, 0.10, 0.10],   # cat 0.30, dog 0.20, car 0.10 -> cat
        [0.05, 0.05, 0.50, 0.20, 0.20],   # dog 0.50 -> dog
        [0.00, 0.20, 0.20, 0.30, 0.30],   # cat 0.10, dog 0.20, car 0.30 -> car
        [0.40, 0.00, 0.20, 0.20, 0.20],   # cat 0.20 = dog 0.20 = car 0.20: tie -> first sorted, car
    ])
    shapes, textures = ["cat", "cat", "dog", "cat"], ["dog", "dog", "cat", "cat"]
    got = decide(probs, shapes, textures, mapping)
    assert [(d, o) for d, o, _ in got] == [("cat", "shape"), ("dog", "texture"), ("car", "other"),
                                           ("car", "excluded")]
    assert got[0][2] == pytest.approx({"car": 0.10, "cat": 0.30, "dog": 0.20})
    assert decide(torch.tensor(probs), shapes, textures, mapping) == got
    with pytest.raises(ValueError, match="one shape and one texture label per row"):
        decide(probs, shapes[:2], textures[:2], mapping)

    recs = [ImageDecision(f"{s}/{i}.png", s, t, d, o, scores=sc, texture_share=0.1 * i)
            for i, (s, t, (d, o, sc)) in enumerate(zip(shapes, textures, got))]
    counts, per_counts, per_cat = tally(recs, mapping.categories)
    assert counts == {"shape": 1, "texture": 1, "other": 1, "excluded": 1, "uncovered": 0}
    assert per_counts["cat"] == {"n_shape": 1, "n_texture": 1, "n_other": 0}
    assert per_cat == {"car": None, "cat": 0.5, "dog": None}

    ta = summarise_texture_attention(recs, {r.path: 0.5 + 0.1 * i for i, r in enumerate(recs)}, layer=3)
    assert ta.share == pytest.approx((0.0 + 0.1 + 0.2) / 3)     # the excluded image does not count
    assert ta.share_shape == pytest.approx(0.0) and ta.share_texture == pytest.approx(0.1)
    assert ta.chance == pytest.approx((0.5 + 0.6 + 0.7) / 3) and ta.n_images == 3 and ta.layer == 3
