"""Query/key vectors (vitlens.capture.qk) and their joint embedding (vitlens.analysis.embedding),
the data of the explorer's global view (issue #16, item 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitlens
from vitlens.analysis.embedding import query_key_embedding
from vitlens.capture.qk import queries_and_keys
from vitlens.errors import UnsupportedModelError

from ..conftest import make_model


@pytest.mark.parametrize("case", ["vit_qk_norm", "deit_distilled", "dinov2_reg4"])
def test_queries_and_keys_make_the_recorded_attention(case):
    model, x = make_model(case)
    res = queries_and_keys(model, x, layers=[0, -1])
    with torch.no_grad(), vitlens.capture(model) as cache:
        logits = model(x)
    assert sorted(res.queries) == [0, cache.num_layers - 1] and res.layout == cache.layout
    assert torch.equal(res.logits, logits)
    for layer, q in res.queries.items():
        k = res.keys[layer]
        assert q.shape == k.shape == (x.shape[0], model.blocks[layer].attn.num_heads, cache.layout.num_tokens,
                                      model.blocks[layer].attn.head_dim)
        p = (q.double() @ k.double().transpose(-1, -2) * model.blocks[layer].attn.scale).softmax(-1)
        assert torch.allclose(p.float(), cache.attention(layer), atol=1e-5)
    # hooks are gone
    assert not any(m._forward_hooks for m in model.modules())


def test_windowed_models_are_refused_with_the_reason():
    import timm

    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
                              embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)).eval()
    with pytest.raises(UnsupportedModelError, match="query and key vectors.*VisionTransformer family"):
        queries_and_keys(model, torch.zeros(1, 3, 64, 64))


def _reference(q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The attention-preserving normalisation (equal spreads, shared centroid) and a PCA by eigendecomposition of the covariance."""
    s = np.sqrt(np.linalg.norm(k - k.mean(0), axis=1).mean() / np.linalg.norm(q - q.mean(0), axis=1).mean())
    q, k = q * s, k / s
    k = k - k.mean(0) + q.mean(0)
    x = np.concatenate([q, k])
    x = x - x.mean(0)
    w, v = np.linalg.eigh(x.T @ x)
    order = np.argsort(w)[::-1][:2]
    return x @ v[:, order], w[order] / w.sum()


def test_embedding_matches_a_reference_pca_and_ignores_what_attention_ignores():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(120, 16, generator=g, dtype=torch.float64) * 2 + 1
    k = torch.randn(100, 16, generator=g, dtype=torch.float64) * 0.5 - 3
    e = query_key_embedding(q, k)
    ref, var = _reference(q.numpy(), k.numpy())
    got = np.concatenate([e.queries.numpy(), e.keys.numpy()])
    for axis in range(2):                                   # PCA axes are defined up to sign
        sign = np.sign(got[:, axis] @ ref[:, axis])
        assert np.allclose(got[:, axis], sign * ref[:, axis], atol=1e-4)
    assert np.allclose(e.explained.numpy(), var, atol=1e-6)
    # transformations that leave every attention row unchanged leave the embedding unchanged:
    # a constant added to every key, and q scaled by a with k scaled by 1/a
    for q2, k2 in [(q, k + torch.randn(16, generator=g, dtype=torch.float64)), (q * 3.0, k / 3.0)]:
        e2 = query_key_embedding(q2, k2)
        for axis in range(2):
            sign = np.sign(float(e2.queries[:, axis] @ e.queries[:, axis]))
            assert torch.allclose(e2.queries[:, axis] * sign, e.queries[:, axis], atol=1e-4)
            assert torch.allclose(e2.keys[:, axis] * sign, e.keys[:, axis], atol=1e-4)
    with pytest.raises(ValueError, match="same d"):
        query_key_embedding(q, k[:, :3])
    with pytest.raises(ValueError, match="n_components"):
        query_key_embedding(q, k, n_components=0)
