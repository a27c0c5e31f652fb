"""timm GC ViT (``timm.models.gcvit.GlobalContextVit``, ``gcvit_*``): window attention alternating
between local queries and global (image-level) queries.

Layer ``l`` is ``stages.{s}.blocks.{j}.attn`` (``WindowAttentionGlobal``) in forward order.
Stage ``s`` works on its fixed ``feat_size`` grid (input / 4, halved per stage), cut into
``ws x ws`` windows (row-major windows, row-major positions; timm requires divisible grids).

Hook point ``stages.{s}.blocks.{j}.attn`` (B batch, h heads, ``n = ws²``), recorded
``[B, nW, h, n, n]`` with the relative position bias inside the softmax:

- even blocks (``use_global`` False): kind ``"window"``, self-attention inside each window;
- odd blocks (``use_global`` True): kind ``"window"`` with ``query_grid`` None: the ``n``
  queries are the stage's *global query tokens* (``stages.{s}.global_block``: the whole stage
  grid pooled down to ``ws x ws``, shared by every window of the image), the keys are the
  window's tokens. Queries and keys are different tokens, so the layer is not square.

No Swin :class:`WindowLayout` (global queries, no shift): token-level analyses refuse these
layers with the reason. Mechanism: ``tap.py`` (GC ViT has no fused path).
"""
from __future__ import annotations

from torch import nn

from . import register_adapter
from .tap import LayerGeo, TapAdapter, pair

_M = "timm.models.gcvit"


@register_adapter
class GcVitAdapter(TapAdapter):
    family = "GCViT"
    examples = ("gcvit_tiny", "gcvit_xxtiny")
    timm_modules = ("gcvit",)
    model_classes = (f"{_M}:GlobalContextVit",)
    attention_classes = (f"{_M}:WindowAttentionGlobal",)
    test_models = (("gcvit_xxtiny", dict(img_size=64)),)

    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f"stages.{s}.blocks.{j}.attn", b.attn)
                for s, st in enumerate(model.stages) for j, b in enumerate(st.blocks)]

    def default_input_size(self) -> tuple[int, int]:
        g = pair(self.model.stages[0].feat_size)
        return g[0] * 4 * (2 if not isinstance(self.model.stages[0].downsample, nn.Identity) else 1), \
            g[1] * 4 * (2 if not isinstance(self.model.stages[0].downsample, nn.Identity) else 1)

    def geometry(self, image_hw: tuple[int, int]) -> list[LayerGeo]:
        out = []
        for s, st in enumerate(self.model.stages):
            h, w = pair(st.feat_size)
            stride = (image_hw[0] // h, image_hw[1] // w)
            for b in st.blocks:
                wh, ww = pair(b.window_size)
                n, nw = wh * ww, (h // wh) * (w // ww)
                q = None if b.attn.use_global else (h, w)
                out.append(LayerGeo("window", n, n, q, (h, w), stride, s, windows=nw))
        return out
