"""timm families of the hierarchical/hybrid set that vitlens refuses, each with its reason.

Refused at the model class (``refuse``): these models hold no layer whose weights on v are a
softmax over tokens that vitlens records exactly. Models that mix such layers with softmax
token attention are claimed by their adapters instead and the other layers skipped
(DaViT's channel attention in ``davit.py``, XCiT's XCA in ``xcit.py``, VOLO's outlook
attention in ``volo.py``, FastViT's RepMixer stages in ``fastvit.py``).
"""
from __future__ import annotations

from . import refuse

refuse("timm.models.efficientvit_mit:EfficientVit",
       "EfficientViT (MIT) uses ReLU linear attention (LiteMLA): (relu(q)·(relu(k)ᵀ·v)) / (relu(q)·Σ relu(k)), "
       "no softmax over tokens and no token-by-token matrix is ever formed")
refuse("timm.models.efficientvit_mit:EfficientVitLarge",
       "EfficientViT-L (MIT) uses ReLU linear attention (LiteMLA): no softmax over tokens and no "
       "token-by-token matrix is ever formed")
refuse("timm.models.efficientvit_msra:EfficientVitMsra",
       "EfficientViT (MSRA) uses cascaded group attention: each head attends inside local windows on a "
       "split of the channels to which the previous head's output was added, so heads are chained, not "
       "parallel views of one token set; vitlens does not record this yet")
refuse("timm.models.coat:CoaT",
       "CoaT uses factorized attention: a softmax over the keys along the token axis, then kᵀ·v (a channels x "
       "channels matrix) applied to q; no token-by-token attention matrix exists to record")
