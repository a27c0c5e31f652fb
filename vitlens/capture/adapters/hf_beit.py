"""Hugging Face transformers BEiT and Data2VecVision: relative position bias inside the attention.

Hook points, per recorded layer ``i`` (B batch, H heads, T tokens, d head dim):

- ``beit.embeddings`` / ``data2vec_vision.embeddings`` (pre-hook): ``pixel_values`` -> token
  layout ``(cls,)`` + the patch grid.
- BEiT ``beit.layers.{i}.attention`` (``BeitAttention``): the layer passes the relative
  position bias (its own, or the model's shared one) as ``attention_mask``; the sdpa
  implementation hands it to ``F.scaled_dot_product_attention(q, k, v, attn_mask=bias)``,
  so the recomputed ``softmax(q·kᵀ·scale + bias)`` ``[B, H, T, T]`` includes it.
- Data2VecVision ``data2vec_vision.encoder.layer.{i}.attention.attention``
  (``Data2VecVisionSdpaSelfAttention``, or ``Data2VecVisionSelfAttention`` when built
  eager): the same SDPA call with the bias as ``attn_mask``, or the eager softmax.
- Grad-CAM: ``...{i}.layernorm_before`` ``[B, T, D]``.
"""
from __future__ import annotations

from . import register_adapter
from .hf_common import HFFlatAdapter, hf_builder

_T = "transformers.models."
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@register_adapter
class HFBeitAdapter(HFFlatAdapter):
    family = "HF-BEiT"
    examples = ("hf:microsoft/beit-base-patch16-224",)
    order = 20
    model_classes = (_T + "beit.modeling_beit:BeitModel", _T + "beit.modeling_beit:BeitForImageClassification")
    backbone_classes = (_T + "beit.modeling_beit:BeitModel",)
    attention_classes = (_T + "beit.modeling_beit:BeitAttention",)
    image_processor = "BeitImageProcessor"
    test_models = (hf_builder("BeitConfig", "BeitForImageClassification", image_size=32, patch_size=8, num_labels=5,
                              use_relative_position_bias=True, **_TINY),
                   hf_builder("BeitConfig", "BeitModel", image_size=32, patch_size=8,
                              use_shared_relative_position_bias=True, use_absolute_position_embeddings=True, **_TINY))

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",)


@register_adapter
class HFData2VecVisionAdapter(HFFlatAdapter):
    family = "HF-Data2VecVision"
    examples = ("hf:facebook/data2vec-vision-base-ft1k",)
    order = 20
    _M = _T + "data2vec.modeling_data2vec_vision:"
    model_classes = (_M + "Data2VecVisionModel", _M + "Data2VecVisionForImageClassification")
    backbone_classes = (_M + "Data2VecVisionModel",)
    attention_classes = (_M + "Data2VecVisionSelfAttention", _M + "Data2VecVisionSdpaSelfAttention")
    layers_path, attention_name = "encoder.layer", "attention.attention"
    image_processor = "BeitImageProcessor"
    test_models = (hf_builder("Data2VecVisionConfig", "Data2VecVisionForImageClassification", image_size=32,
                              patch_size=8, num_labels=5, use_relative_position_bias=True, **_TINY),)

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",)
