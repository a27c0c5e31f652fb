"""ViT towers of multimodal models in timm: Qwen3-VL (``qwen3_vit_*``) and DeepSeek
(``deepseek_vit_*``) image encoders, as timm's classifier wrappers
(``Qwen3VitClassifier``, ``DeepseekVitClassifier``: ``encoder`` + pooling + head) and as the
encoders built alone (``*_enc``: ``Qwen3VitEncoder``, ``DeepseekVitEncoder``).

Plain pre-norm ViTs over the patch grid without prefix tokens; axial 2D RoPE on q and k
(``timm.layers.AttentionRope``), plus a resampled absolute grid embedding (Qwen3).

Hook points, per layer ``i`` (B batch, H heads, N = gh * gw patches), under the tower's path
(:attr:`VitTowerAdapter.tower_path`: ``encoder.`` in the classifiers, nothing for ``*_enc``):

- ``encoder.patch_embed`` (forward hook): image -> NHWC grid ``[B, gh, gw, C]``: the token
  layout (no prefix tokens; any input size, the grid is read from this output).
- default path: ``encoder.blocks.{i}.attn`` calls ``F.scaled_dot_product_attention(q, k,
  v)`` with q, k after RoPE (grouped-query k repeated to every head); a
  ``TorchFunctionMode`` (``generic.SdpaTap``) computes ``softmax(q·kᵀ·scale)`` beside it,
  ``[B, H, N, N]``; outputs bit-identical.
- gradient path: ``fused_attn`` off for the block and ``encoder.blocks.{i}.attn.attn_drop``
  (forward hook) receives the probabilities multiplied with v.

The ``*_enc`` variants (:class:`VitTowerEncoderAdapter`) are the same tower at the model's
root followed by the VLM projector (Qwen's ``merger``: 2x2 spatial merge; DeepSeek's
``aligner``: 3x3 unshuffle). The projector runs after the blocks and is no attention; the
blocks see the NHWC patch grid flattened row-major (Qwen's reference orders tokens by its
spatial merge, timm's encoder does not), so the layout is the classifiers' and recording is
exact. Their forward returns tokens for a language model, not class logits: ``logits`` refuses
(:class:`TokensOnly`), and with it everything that needs a prediction (explain, evaluate,
shape bias, token importance, the logits export). Gemma 4's tower (``gemma4_vit_*``): see
``gemma4_vit.py``.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch
from torch import nn

from . import RecordFn, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError
from .generic import BlocksAdapter, _to_pair


@register_adapter
class VitTowerAdapter(BlocksAdapter):
    family = "ViT tower"
    examples = ("qwen3_vit_88m", "deepseek_vit_412m")
    order = 10
    timm_modules = ("qwen3_vit", "deepseek_vit")
    model_classes = ("timm.models.qwen3_vit:Qwen3VitClassifier", "timm.models.deepseek_vit:DeepseekVitClassifier")
    attention_classes = ("timm.layers.attention:AttentionRope",)
    test_models = (("qwen3_vit_88m", dict(img_size=64, depth=2, embed_dim=64, num_heads=4)),
                   ("deepseek_vit_412m", dict(img_size=(56, 84), depth=2, embed_dim=64, num_heads=4)))
    #: path of the tower (the module holding ``patch_embed`` and ``blocks``) inside the model:
    #: ``"encoder"`` in the classifier wrappers, ``""`` for an encoder built alone; every hook
    #: point is named under it (``encoder.blocks.{i}.attn`` / ``blocks.{i}.attn``)
    tower_path = "encoder"

    @classmethod
    def tower_of(cls, model: nn.Module) -> nn.Module:
        """The tower module of ``model`` (``model`` itself when :attr:`tower_path` is ``""``)."""
        return model.get_submodule(cls.tower_path)

    @classmethod
    def point(cls, path: str) -> str:
        """The hook-point name of the tower's submodule ``path`` (``"blocks.0.attn"`` -> ``"encoder.blocks.0.attn"``)."""
        return f"{cls.tower_path}.{path}" if cls.tower_path else path

    @property
    def tower(self) -> nn.Module:
        return self.tower_of(self.model)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(cls.point(f"blocks.{i}.attn"), b.attn) for i, b in enumerate(cls.tower_of(model).blocks)]

    @property
    def num_heads(self) -> int:
        return int(self.tower.blocks[0].attn.num_heads)

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    def default_input_size(self) -> tuple[int, int]:
        return _to_pair(self.tower.patch_embed.img_size)

    def _layout(self, image_hw: tuple[int, int], grid: tuple[int, int]) -> TokenLayout:
        return TokenLayout(num_prefix_tokens=0, prefix_names=(), grid_size=grid,
                           patch_size=_to_pair(self.tower.patch_embed.patch_size), input_size=tuple(image_hw))

    def layout_for(self, image_hw: tuple[int, int]) -> TokenLayout:
        pe = self.tower.patch_embed
        (ph, pw) = _to_pair(pe.patch_size)
        pad = bool(getattr(pe, "dynamic_img_pad", False))
        grid = (-(-image_hw[0] // ph), -(-image_hw[1] // pw)) if pad else (image_hw[0] // ph, image_hw[1] // pw)
        return self._layout(image_hw, grid)

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        return tuple(self.point(f"blocks.{i}.norm1") for i in range(len(self.tower.blocks))), "tokens"

    def block_points(self) -> list[tuple[str, nn.Module]]:
        return [(self.point(f"blocks.{i}"), b) for i, b in enumerate(self.tower.blocks)]

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None],
                chunk: int | str | None = None) -> None:
        current: dict[str, TokenLayout] = {}

        def on_patches(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if out.ndim != 4:
                raise UnsupportedModelError(f"{self.point('patch_embed')} returned {tuple(out.shape)}; vitlens "
                                            f"expects the NHWC patch grid [B, H, W, C]")
            current["layout"] = layout = self._layout(tuple(args[0].shape[-2:]), (int(out.shape[1]), int(out.shape[2])))
            set_layout(layout)

        stack.callback(self.tower.patch_embed.register_forward_hook(on_patches).remove)
        if not grad:
            layers = self._install_sdpa(stack, layers, record, heads, rows, current, chunk)
        self._install_unfused(stack, layers, record, heads, rows, current)


class TokensOnly:
    """Mixin for adapters of models whose forward returns tokens for a language model, not
    class logits (the multimodal towers' encoders built alone, ``*_enc``).

    Capture records them exactly; :meth:`logits` (and so :func:`vitlens.capture.logits_of`,
    even on the plain tensor they return) refuses with the reason, so nothing that needs a
    prediction reads tokens as logits.
    """

    returns_logits = False
    returns_instead = "tokens for a language model, not class logits"
    model: nn.Module

    def logits(self, output: object) -> torch.Tensor:
        raise UnsupportedModelError(self.no_logits_reason())

    def no_logits_reason(self) -> str:
        arch = (getattr(self.model, "pretrained_cfg", None) or {}).get("architecture")
        name = type(self.model).__name__ + (f" ({arch})" if arch else "")
        return (
            f"{name} returns {self.returns_instead}, so what needs a prediction "
            f"(explain, evaluate, shape bias, token importance, the logits export) cannot run on it: build the "
            f"matching classifier (the name without _enc, whose .encoder is this class) for those. Capture and "
            f"the analyses that need neither logits nor a CLS token (rollout, attention distance and entropy, "
            f"attention received) work on the encoder")


@register_adapter
class VitTowerEncoderAdapter(TokensOnly, VitTowerAdapter):
    """``Qwen3VitEncoder`` / ``DeepseekVitEncoder`` built alone (``*_enc``): the classifiers' tower at the
    model's root. The VLM projector (Qwen's merger, DeepSeek's aligner) runs after the blocks and is no
    attention; the blocks see the patch grid row-major, as in the classifiers."""

    family = "ViT tower encoder"
    examples = ("qwen3_vit_88m_enc", "deepseek_vit_412m_enc")
    model_classes = ("timm.models.qwen3_vit:Qwen3VitEncoder", "timm.models.deepseek_vit:DeepseekVitEncoder")
    tower_path = ""
    test_models = (("qwen3_vit_88m_enc", dict(img_size=64, depth=2, embed_dim=64, num_heads=4, out_features=32)),
                   ("deepseek_vit_412m_enc", dict(img_size=(56, 84), depth=2, embed_dim=64, num_heads=4,
                                                  out_features=32)))
