"""Shared fixtures: tiny random-init timm models of every supported family, real images."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

#: name -> (timm model, create kwargs, input (H, W)); small depth/size keeps tests fast.
FAMILY_CASES: dict[str, tuple[str, dict, tuple[int, int]]] = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=64, depth=3), (64, 64)),
    "vit_qk_norm": ("vit_tiny_patch16_224", dict(img_size=64, depth=3, qk_norm=True), (64, 64)),
    "deit": ("deit_tiny_patch16_224", dict(img_size=64, depth=3), (64, 64)),
    "deit3": ("deit3_small_patch16_224", dict(img_size=64, depth=3), (64, 64)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=3), (64, 64)),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, depth=3), (56, 56)),
    "gap_no_cls": ("vit_medium_patch16_gap_256", dict(img_size=64, depth=3), (64, 64)),
    "clip": ("vit_base_patch16_clip_224", dict(img_size=64, depth=2, embed_dim=192, num_heads=3), (64, 64)),
    "non_square": ("vit_tiny_patch16_224", dict(img_size=(48, 80), depth=3), (48, 80)),
    "dynamic_img_size": ("vit_tiny_patch16_224", dict(dynamic_img_size=True, depth=3), (48, 80)),
}


def shared_data(*parts: str) -> Path | None:
    """A path under the project's shared data (``shared/data``), or None when absent.

    Looked up in $VITLENS_SHARED_DATA, then in a ``shared/data`` beside any parent of the
    repository (the layout of the workspace and of CI), then ``/work/shared/data``.
    """
    roots = [Path(os.environ["VITLENS_SHARED_DATA"])] if os.environ.get("VITLENS_SHARED_DATA") else []
    roots += [parent / "shared" / "data" for parent in REPO.parents]
    roots.append(Path("/work/shared/data"))
    for root in roots:
        if (root.joinpath(*parts)).exists():
            return root.joinpath(*parts)
    return None


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """vitlens' caches (``vitlens models`` verdicts) go to a fresh folder, not ~/.cache:
    every run checks for real and leaves the user's cache alone."""
    before = os.environ.get("VITLENS_CACHE_DIR")
    os.environ["VITLENS_CACHE_DIR"] = str(tmp_path_factory.mktemp("vitlens-cache"))
    yield
    if before is None:
        os.environ.pop("VITLENS_CACHE_DIR", None)
    else:
        os.environ["VITLENS_CACHE_DIR"] = before


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run torch single-threaded in the tests (restored afterwards).

    The test models are tiny: one thread is as fast on an idle machine and ~10x faster
    on a busy 2-core one, where torch's intra-op pool fights other processes.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(case: str) -> tuple[torch.nn.Module, torch.Tensor]:
    import timm

    name, kwargs, (h, w) = FAMILY_CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    # random-init timm ViTs start with near-uniform attention; sharpen q/k so tests see structure
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    return model, x


@pytest.fixture(params=list(FAMILY_CASES))
def family_model(request):
    model, x = make_model(request.param)
    return request.param, model, x


@pytest.fixture(scope="module")
def demo():
    """``vitlens.load_model("demo", device="cpu")``, once per test module (tests must not modify it)."""
    import vitlens

    return vitlens.load_model("demo", device="cpu")


@pytest.fixture(scope="session")
def cifar10_archive() -> Path | None:
    """The CIFAR-10 JPEG archive of the shared data (CI has it), or None."""
    return shared_data("cifar10", "cifar10-jpg.tar.gz")


@pytest.fixture(scope="session")
def chelsea_path() -> Path:
    return EXAMPLES / "chelsea.jpg"
