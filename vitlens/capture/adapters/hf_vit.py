"""Hugging Face transformers flat ViTs: ViT, DeiT (with the distillation token), DINOv2 (with
and without registers), and the CLIP and SigLIP vision towers (``*VisionModel``,
``CLIPVisionModelWithProjection``, ``*ForImageClassification``).

Hook points, per recorded layer ``i`` (paths inside the claimed model; ``{bb}`` is the
backbone, e.g. ``vit``, ``deit``, ``dinov2``, ``vision_model``, or nothing when the model
is the backbone; B batch, H heads, T tokens, d head dim):

- ``{bb}.embeddings`` (pre-hook): ``pixel_values [B, C, H_in, W_in]`` -> token layout
  (prefix tokens from the family, grid ``H_in // patch, W_in // patch``).
- ``{bb}.layers.{i}.attention`` (ViT, DeiT), ``{bb}.encoder.layer.{i}.attention``
  (DINOv2), ``{bb}.encoder.layers.{i}.self_attn`` (CLIP, SigLIP): the module's call of
  ``F.scaled_dot_product_attention(q [B, H, T, d], k, v, attn_mask=None, scale)`` (sdpa,
  the default) or its softmax (eager) -> ``[B, H, T, T]`` (see ``hf_common.py``).
- Grad-CAM: the layer norm before each attention (``layernorm_before``, ``norm1``,
  ``layer_norm1``), ``[B, T, D]``.

Token layouts: ViT ``(cls,)``; DeiT ``(cls, dist)`` (transformers' DeiT always has the
distillation token; ``DeiTForImageClassificationWithTeacher`` averages both heads);
DINOv2 ``(cls,)``, with registers ``(cls, reg × num_register_tokens)``; CLIP ``(cls,)``;
SigLIP none (no class token: CLS maps are refused, rollout uses the mean of the patch rows).

Not recorded: SigLIP's attention-pooling head (``head.attention``, a ``torch.nn.MultiheadAttention``
whose single query is a learned probe, not a token of the sequence). It is cross-attention
from a latent onto the last layer's tokens, not token self-attention; the classification
model (``SiglipForImageClassification``) does not use it (it averages the tokens).
"""
from __future__ import annotations

from contextlib import ExitStack

from . import class_path, register_adapter
from .hf_common import HFFlatAdapter, hf_builder

_T = "transformers.models."
#: facebook/dinov2-*'s preprocessor_config.json: ImageNet statistics, resize 256, crop 224
_DINOV2_PROCESSOR = dict(size={"shortest_edge": 256}, image_mean=(0.485, 0.456, 0.406),
                         image_std=(0.229, 0.224, 0.225))


def _tiny(**extra):
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **extra)


@register_adapter
class HFViTAdapter(HFFlatAdapter):
    family = "HF-ViT"
    examples = ("hf:google/vit-base-patch16-224",)
    order = 20
    model_classes = (_T + "vit.modeling_vit:ViTModel", _T + "vit.modeling_vit:ViTForImageClassification")
    backbone_classes = (_T + "vit.modeling_vit:ViTModel",)
    attention_classes = (_T + "vit.modeling_vit:ViTAttention",)
    image_processor = "ViTImageProcessor"
    test_models = (hf_builder("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8,
                              num_labels=5, **_tiny()),
                   hf_builder("ViTConfig", "ViTModel", image_size=(24, 40), patch_size=8, **_tiny()))

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",)


@register_adapter
class HFDeiTAdapter(HFFlatAdapter):
    family = "HF-DeiT"
    examples = ("hf:facebook/deit-tiny-distilled-patch16-224",)
    order = 20
    model_classes = (_T + "deit.modeling_deit:DeiTModel", _T + "deit.modeling_deit:DeiTForImageClassification",
                     _T + "deit.modeling_deit:DeiTForImageClassificationWithTeacher")
    backbone_classes = (_T + "deit.modeling_deit:DeiTModel",)
    attention_classes = (_T + "deit.modeling_deit:DeiTAttention",)
    image_processor = "DeiTImageProcessor"
    test_models = (hf_builder("DeiTConfig", "DeiTForImageClassificationWithTeacher", image_size=32, patch_size=8,
                              num_labels=5, **_tiny()),)

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls", "dist")


@register_adapter
class HFDinov2Adapter(HFFlatAdapter):
    family = "HF-DINOv2"
    examples = ("hf:facebook/dinov2-small",)
    order = 20
    model_classes = (_T + "dinov2.modeling_dinov2:Dinov2Model", _T + "dinov2.modeling_dinov2:Dinov2ForImageClassification")
    backbone_classes = (_T + "dinov2.modeling_dinov2:Dinov2Model",)
    attention_classes = (_T + "dinov2.modeling_dinov2:Dinov2Attention",)
    layers_path, norm_name = "encoder.layer", "norm1"
    image_processor, processor_kwargs = "BitImageProcessor", _DINOV2_PROCESSOR
    test_models = (hf_builder("Dinov2Config", "Dinov2ForImageClassification", image_size=28, patch_size=7,
                              num_labels=5, **_tiny()),)

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",)


@register_adapter
class HFDinov2RegAdapter(HFFlatAdapter):
    family = "HF-DINOv2-reg"
    examples = ("hf:facebook/dinov2-with-registers-small",)
    order = 20
    _M = _T + "dinov2_with_registers.modeling_dinov2_with_registers:"
    model_classes = (_M + "Dinov2WithRegistersModel", _M + "Dinov2WithRegistersForImageClassification")
    backbone_classes = (_M + "Dinov2WithRegistersModel",)
    attention_classes = (_M + "Dinov2WithRegistersAttention",)
    layers_path, norm_name = "encoder.layer", "norm1"
    image_processor, processor_kwargs = "BitImageProcessor", _DINOV2_PROCESSOR
    test_models = (hf_builder("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification",
                              image_size=28, patch_size=7, num_register_tokens=3, num_labels=5, **_tiny()),)

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",) + ("reg",) * int(self.backbone()[1].config.num_register_tokens)


@register_adapter
class HFCLIPVisionAdapter(HFFlatAdapter):
    family = "HF-CLIP-vision"
    examples = ("hf:openai/clip-vit-base-patch32",)
    order = 20
    _M = _T + "clip.modeling_clip:"
    model_classes = (_M + "CLIPVisionModel", _M + "CLIPVisionModelWithProjection", _M + "CLIPForImageClassification")
    backbone_classes = (_M + "CLIPVisionModel",)
    attention_classes = (_M + "CLIPAttention",)
    layers_path, attention_name, norm_name = "encoder.layers", "self_attn", "layer_norm1"
    image_processor = "CLIPImageProcessor"
    test_models = (hf_builder("CLIPConfig", "CLIPForImageClassification", num_labels=5,
                              vision_config=dict(image_size=32, patch_size=8, **_tiny())),
                   hf_builder("CLIPVisionConfig", "CLIPVisionModelWithProjection", image_size=32, patch_size=8,
                              projection_dim=16, **_tiny()))

    def prefix_names(self) -> tuple[str, ...]:
        return ("cls",)


@register_adapter
class HFSiglipVisionAdapter(HFFlatAdapter):
    family = "HF-SigLIP-vision"
    examples = ("hf:google/siglip-base-patch16-224",)
    order = 20
    _M = _T + "siglip.modeling_siglip:"
    model_classes = (_M + "SiglipVisionModel", _M + "SiglipForImageClassification")
    backbone_classes = (_M + "SiglipVisionModel",)
    attention_classes = (_M + "SiglipAttention",)
    layers_path, attention_name, norm_name = "encoder.layers", "self_attn", "layer_norm1"
    image_processor = "SiglipImageProcessor"
    test_models = (hf_builder("SiglipConfig", "SiglipForImageClassification", num_labels=5,
                              vision_config=dict(image_size=32, patch_size=8, **_tiny())),
                   hf_builder("SiglipVisionConfig", "SiglipVisionModel", image_size=32, patch_size=8, **_tiny()))

    def prefix_names(self) -> tuple[str, ...]:
        return ()

    def relevance_context(self, stack: ExitStack) -> None:
        """``SiglipForImageClassification`` classifies the mean of the last layer's tokens, yet its tower
        still runs the attention-pooling head (``nn.MultiheadAttention``, no LRP rule) and drops the
        result: the head is off for the LRP pass (``use_head``, restored), the logits are the same.
        A ``SiglipVisionModel`` has no logits, so nothing to explain."""
        if class_path(self.model) != self._M + "SiglipForImageClassification":
            return
        _, tower = self.backbone()
        if getattr(tower, "use_head", False) is True:
            stack.callback(setattr, tower, "use_head", True)
            tower.use_head = False
