"""Results read well in Jupyter and record what made them (issue #15).

Every result type, made on the demo model and real data: ``repr`` is a few lines
(shapes, parameters, a summary) - never the tensors or 1,280 decisions - the tabular
ones have an HTML table, and each carries ``params``. Constructors refuse bad arguments
by name, also under ``python -O``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitlens
from vitlens.batch import ExportOptions

REPO = Path(__file__).resolve().parents[2]
STIMULI = REPO / "tests" / "data" / "cue-conflict"
MAX_LINES = 15


@pytest.fixture(scope="module")
def results(demo):
    model, cfg = demo
    imgs = [vitlens.load_image(p) for p in sorted((REPO / "examples").glob("*.jpg"))]
    x = torch.stack([vitlens.preprocess(im, cfg).tensor for im in imgs])
    out = {
        "LoadedModel": vitlens.load_model("demo"),
        "Explanation": vitlens.explanation(model, x, "chefer"),
        "AttentionMaps": vitlens.attention_maps(model, x, method="cls", head=None),
        "HighNormTokens": vitlens.high_norm_tokens(model, x),
        "HeadStatistics": vitlens.head_statistics(model, x)["distance"],
        "FaithfulnessResult": vitlens.evaluate(model, x, methods=["rollout", "chefer", "random"],
                                               metrics=["deletion", "positive"], steps=8),
        "KeepRatioCurve": vitlens.keep_ratio_curve(model, x),
        "ShapeBiasResult": vitlens.shape_bias((model, cfg), STIMULI),
    }
    out["Curve"] = out["FaithfulnessResult"].curves["rollout"]["deletion"]
    from vitlens.analysis.shape_bias import load_mapping

    out["CategoryMapping"] = load_mapping("imagenet16")
    return out


@pytest.mark.parametrize("name", ["LoadedModel", "Explanation", "AttentionMaps", "HighNormTokens", "HeadStatistics",
                                  "FaithfulnessResult", "KeepRatioCurve", "ShapeBiasResult", "Curve",
                                  "CategoryMapping"])
def test_repr_is_compact(results, name):
    text = repr(results[name])
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f"{name} repr has {len(lines)} lines:\n{text}"
    assert max(len(line) for line in lines) <= 240, text
    assert text.startswith(name), text
    assert "tensor([" not in text and "Sequential(" not in text, text   # no tensor values, no module tree


def test_reprs_say_what_matters(results):
    assert "maps=tensor[4, 8, 8] float32" in repr(results["Explanation"])
    assert "method='chefer'" in repr(results["Explanation"])
    assert "maps=tensor[4, 4, 8, 8] float32" in repr(results["AttentionMaps"])   # head=None: per head
    assert "head=None" in repr(results["AttentionMaps"])
    sb = results["ShapeBiasResult"]
    assert f"shape bias {sb.shape_bias:.3f}" in repr(sb) and f"n_shape={sb.n_shape}" in repr(sb)
    assert f"<{len(sb.decisions)} ImageDecision>" in repr(sb)
    fr = results["FaithfulnessResult"]
    assert f"deletion={fr['chefer']['deletion']:.4g}" in repr(fr)
    assert "layer=5" in repr(results["HighNormTokens"])


@pytest.mark.parametrize("name", ["Explanation", "AttentionMaps", "HeadStatistics", "FaithfulnessResult",
                                  "KeepRatioCurve", "ShapeBiasResult"])
def test_html_tables(results, name):
    html = results[name]._repr_html_()
    assert html.count("<table") == 1 and "<th>" in html and "parameters:" in html


def test_html_table_values(results):
    fr = results["FaithfulnessResult"]
    html = fr._repr_html_()
    assert f"{fr['rollout']['positive']:.4g} ± {fr.sem('rollout', 'positive'):.2g}" in html
    sb = results["ShapeBiasResult"]
    html = sb._repr_html_()
    for cat in sb.categories:
        assert f"<td>{cat}</td>" in html


@pytest.mark.parametrize("name, keys", [
    ("Explanation", {"method"}),
    ("AttentionMaps", {"method", "layer", "head"}),
    ("HighNormTokens", {"layer", "k", "threshold"}),
    ("HeadStatistics", {"model", "layers", "input_size", "patch_size"}),
    ("FaithfulnessResult", {"methods", "metrics", "target_source", "baselines", "steps"}),
    ("KeepRatioCurve", {"method", "seed"}),
    ("ShapeBiasResult", {"model", "mapping", "stimuli_dir", "input_size", "mean", "std"}),
    ("Curve", {"method", "metric"}),
])
def test_results_record_their_parameters(results, name, keys):
    params = results[name].params
    assert isinstance(params, dict) and keys <= set(params), (name, params)


def test_explanation_params_hold_every_option(results):
    e = results["Explanation"]
    assert e.params == {"method": "chefer"}
    assert vitlens.explanation(vitlens.load_model("demo").model, torch.zeros(1, 3, 32, 32), "rollout",
                               discard_ratio=0.5).params == {"method": "rollout", "head": "mean", "discard_ratio": 0.5}


# ------------------------------------------------------------- constructors refuse by name
@pytest.mark.parametrize("kwargs, error, name", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size="8"), TypeError, "batch_size"),
    (dict(workers=-1), ValueError, "workers"),
    (dict(limit=0), ValueError, "limit"),
    (dict(dtype="int8"), ValueError, "dtype"),
    (dict(compression="zip"), ValueError, "compression"),
    (dict(precision="fp8"), ValueError, "precision"),
    (dict(layers=[0]), ValueError, "layers"),
    (dict(analyses="cls"), TypeError, "analyses"),
    (dict(resume=True, overwrite=True), ValueError, "resume"),
])
def test_export_options_refuse_bad_values_by_name(kwargs, error, name):
    with pytest.raises(error) as info:
        ExportOptions(**kwargs)
    assert f"`{name}" in str(info.value)


def test_validation_holds_under_python_O(tmp_path):
    """``python -O`` strips asserts: user-facing checks must not be asserts."""
    code = r'''
import torch, vitlens
from vitlens.batch import ExportOptions
from vitlens.export.hdf5 import Column, ExportWriter
assert not __debug__
checks = []
def refuses(f, error):
    try:
        f()
    except error:
        checks.append(True)
    else:
        raise SystemExit(f"not refused: {f}")
refuses(lambda: ExportOptions(batch_size=0), ValueError)
model, cfg = vitlens.load_model("demo")
x = torch.zeros(1, 3, 32, 32)
with vitlens.capture(model) as cache:
    model(x)
refuses(lambda: vitlens.rollout(cache, head="median"), ValueError)
refuses(lambda: vitlens.cls_attention(cache, layer=6), ValueError)
refuses(lambda: vitlens.high_norm_tokens(model, x, layer=6), ValueError)
refuses(lambda: vitlens.explain(model, x[0]), ValueError)
w = ExportWriter("out.h5", [Column("images/path", (), "str", 4)], {}, {}, planned_rows=1)
w.close()
refuses(lambda: w.set_attrs(a=1), ValueError)
print(len(checks))
'''
    r = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-500:]
    assert r.stdout.strip().splitlines()[-1] == "6"
