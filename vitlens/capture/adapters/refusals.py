"""timm families of issue #11 (a) that vitlens does not record yet, refused with the reason.

Each entry says what the model does that no adapter models: recording it without that
knowledge would give attention on a wrong token layout, so the model is refused
(``UnsupportedModelError``) rather than recorded approximately.
"""
from __future__ import annotations

from . import refuse

refuse("timm.models.gemma4_vit:Gemma4VitClassifier",
       "the Gemma 4 ViT tower is not covered yet: Gemma4Attention uses its own 2D RoPE and a padding mask from "
       "the patch embedding, and blocks with four norms; no adapter models them")
