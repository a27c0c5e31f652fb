"""vitlens.pl: one plot per result, each drawing into ax= (single panels) and returning the Figure."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import vitlens
from vitlens import pl

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture(scope="module")
def made(demo):
    model, cfg = demo
    x = torch.rand(2, 3, 32, 32)
    return {
        "explanation": vitlens.explanation(model, x, "rollout"),
        "stats": vitlens.head_statistics(model, x)["distance"],
        "faith": vitlens.evaluate(model, x, methods=["rollout", "random"], metrics=["deletion"], steps=4),
        "keep": vitlens.keep_ratio_curve(model, x, ratios=[0.5, 1.0]),
    }


def _ax():
    fig = Figure()
    return fig, fig.add_subplot(1, 1, 1)


def test_each_plot_draws_into_the_given_axes(made):
    for draw in (lambda ax: pl.explanation(made["explanation"], 1, ax=ax),
                 lambda ax: pl.head_statistics(made["stats"], ax=ax),
                 lambda ax: pl.faithfulness(made["faith"], "deletion", ax=ax),
                 lambda ax: pl.keep_ratio(made["keep"], ax=ax)):
        fig, ax = _ax()
        assert draw(ax) is fig
        assert ax.has_data()


def test_each_plot_makes_a_figure_without_axes(made):
    e = made["explanation"]
    fig = pl.explanation(e, 0)
    assert isinstance(fig, Figure)
    img = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(img), e.maps[0].numpy())   # the map itself, not a copy of another image
    assert "rollout" in fig.axes[0].get_title()
    assert isinstance(pl.heads(torch.rand(4, 8, 8)), Figure)
    assert isinstance(pl.head_statistics(made["stats"]), Figure)
    assert isinstance(pl.faithfulness(made["faith"]), Figure)
    assert isinstance(pl.keep_ratio(made["keep"]), Figure)


def test_explanation_over_a_photo_and_errors(made):
    photo = np.full((40, 60, 3), 128, np.uint8)
    fig, ax = _ax()
    pl.explanation(made["explanation"], 0, image=photo, ax=ax)
    assert ax.images[0].get_array().shape[:2] == (40, 60)
    with pytest.raises(ValueError, match="index 5"):
        pl.explanation(made["explanation"], 5)
    with pytest.raises(ValueError, match="vitlens.pl.heads"):
        pl.explanation(torch.rand(2, 3, 8, 8))


def test_import_vitlens_does_not_load_matplotlib(tmp_path):
    code = "import sys, vitlens; vitlens.pl; print('matplotlib' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.stdout.strip() == "False", r.stderr[-2000:]
