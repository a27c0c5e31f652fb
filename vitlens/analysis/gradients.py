"""Gradient-based explanations of timm ViTs: the building blocks behind :func:`vitlens.explain`.

Everything here runs the model; the functions that do leave it exactly as they found it
(:func:`preserved_model_state`). Users normally call :func:`vitlens.explain`, which picks
the method by name; these functions are public for those who want the pieces.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode for the block, then restore everything the block may touch.

    Restored on exit, after success and after an exception: every module's ``training``
    flag, every parameter's ``requires_grad`` flag and its ``.grad`` (the very tensor
    object that was there, ``None`` included). Hooks are the business of the code that
    installs them (:func:`vitlens.capture` and this module remove theirs in ``finally``).

    Explanations are computed in eval mode (no dropout, no stochastic depth): a model
    passed in training mode is switched to eval for the block and back afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training
        for p, req, grad in params:
            if p.requires_grad != req:
                p.requires_grad_(req)
            if p.grad is not grad:
                p.grad = grad
