"""timm VisionTransformer family: vit_*, deit_*, deit3_*, flexivit, DINOv2 (with registers),
CLIP image towers, global-pool models, SigLIP/MAP attention-pool heads, parallel-block ViTs,
hybrid (CNN-stem) ViTs and ViTamin (MbConv stem), and VisionTransformerDistilled (DeiT distilled).

Layers, in forward order (timm module paths; shapes for batch B, heads H, sequence T,
head dim d, patches N = gh * gw, latents L):

- ``blocks.{i}.attn`` (``timm.layers.Attention``, kind ``"self"``): ``Block`` and
  ``ResPostBlock`` models, one layer per block, ``[B, H, T, T]``.
- ``blocks.{i}.attns.{j}.attn`` (``Attention``, ``"self"``): ``ParallelThingsBlock``
  (``vit_small_patch16_18x2_224``, "Three things", Touvron et al. 2022): ``num_parallel``
  attention branches per block that all read the block input; layer ``i * P + j``.
- ``blocks.{i}`` (``ParallelScalingBlock``, ``"self"``): ViT-22B-style parallel blocks
  (``vit_*_xp_*``, ``vit_pwee_*``): one fused ``in_proj`` gives the MLP input and q, k, v;
  the block is its own attention module, ``[B, H, T, T]``.
- ``attn_pool`` (``timm.layers.AttentionPoolLatent``, kind ``"pool"``, SigLIP/MAP heads,
  ``global_pool="map"``): the learned latents query the token sequence the head sees
  (the patch tokens, or prefix + patches when ``pool_include_prefix``): ``[B, H, L, N]``
  (``[B, H, L, P + N]``), L = ``latent_len`` (1 in timm's models). ``AttentionPoolPrr``
  (``global_pool="prr"``, parameter-free self-attention over the sequence before pooling)
  is recorded as ``"pool"`` too, ``[B, H, T, T]``.

Hook points:

- ``patch_embed`` (pre-hook): input image ``[B, C, H_in, W_in]`` -> token layout. The
  layout's ``patch_size`` is the effective stride: for hybrid models (``vit_*_r*_*``,
  ``HybridEmbed`` over a ResNet stem) the backbone's reduction times the projection patch
  (``patch_embed.feat_ratio()``), e.g. 32 px for ``vit_tiny_r_s16_p8_224``.
- recompute path (default) for ``Attention`` layers: ``blocks.{i}.attn`` (pre-hook:
  keyword ``attn_mask`` / ``is_causal``), ``...attn.q_norm`` -> q ``[B, H, T, d]`` and
  ``...attn.k_norm`` -> k ``[B, H, T, d]``; ``softmax(q·kᵀ·scale + mask)`` is computed
  beside the module, which keeps its fused kernel (outputs bit-identical).
- chunked path (``capture(chunk=...)``, reduce on record): every fused layer's own
  ``F.scaled_dot_product_attention`` call is computed by vitlens in image chunks
  (``generic.SdpaCall.attend``), each chunk's probabilities reduced while in cache.
- recompute path for ``ParallelScalingBlock`` and the pool heads: the module's own
  ``F.scaled_dot_product_attention(q, k, v, mask)`` call is seen by a
  ``TorchFunctionMode`` (see ``generic.SdpaTap``) and the probabilities computed beside it.
- gradient path (``grad=True``): ``fused_attn`` is set to False on the recorded modules
  for the block; ``...attn_drop`` (forward hook) -> ``[B, H, T, T]`` for attention and
  parallel-scaling blocks; for the pool heads (no ``attn_drop``) the softmax the module
  computes is taken as it is made (``generic.SoftmaxTap``) -- in both cases the very
  tensor multiplied with v, graph attached.

Refused: differential attention (``DiffAttention``, ``DiffParallelScalingBlock``).
Analyses over ``T x T`` token matrices (rollout, CLS maps, distances) refuse the
``"pool"`` layer (its queries are latents); pass ``layers=`` with the blocks.
"""
from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Any, Callable

import torch
from torch import nn

from . import REFUSED_ATTENTION, RecordFn, refuse, register_adapter
from ..cache import TokenLayout
from ...errors import UnsupportedModelError
from .generic import BlocksAdapter, SdpaTap, SoftmaxTap, attention_probs, sdpa_recorder, set_unfused

_VT = "timm.models.vision_transformer"
_ATTENTION = "timm.layers.attention:Attention"
_SCALING = f"{_VT}:ParallelScalingBlock"
_LATENT = "timm.layers.attention_pool:AttentionPoolLatent"
_PRR = "timm.layers.attention_pool:AttentionPoolPrr"

refuse(f"{_VT}:DiffParallelScalingBlock",
       "a parallel block with " + REFUSED_ATTENTION["timm.layers.diff_attention:DiffAttention"], attention=True)


def _cls(m: nn.Module) -> str:
    return f"{type(m).__module__}:{type(m).__qualname__}"


@register_adapter
class VitAdapter(BlocksAdapter):
    family = "VisionTransformer"
    examples = ("vit_base_patch16_224", "deit_tiny_distilled_patch16_224",
                "vit_small_patch14_reg4_dinov2", "vit_medium_patch16_gap_256")
    order = 0
    timm_modules = ("vision_transformer", "deit", "vision_transformer_hybrid", "vitamin")
    model_classes = ("timm.models.vision_transformer:VisionTransformer",
                     "timm.models.deit:VisionTransformerDistilled")
    attention_classes = (_ATTENTION, _SCALING, _LATENT, _PRR)
    #: attention classes whose unfused path passes the probabilities through ``attn_drop``
    #: (the gradient path hooks it); other claimed classes are read at their softmax
    attn_drop_classes: tuple[str, ...] = (_ATTENTION, _SCALING)
    token_drop = True
    test_models = (("vit_tiny_patch16_224", dict(img_size=64)),
                   ("deit_tiny_distilled_patch16_224", dict(img_size=64)),
                   ("vit_small_patch14_reg4_dinov2", dict(img_size=56, depth=2)),
                   ("vit_medium_patch16_gap_256", dict(img_size=64, depth=2)),
                   ("vit_base_patch16_224", dict(img_size=(48, 80), depth=2, qk_norm=True)),
                   # parallel blocks: two attention branches per block; fused in_proj blocks
                   ("vit_small_patch16_18x2_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=2)),
                   ("vit_pwee_patch16_reg1_gap_256", dict(img_size=48, depth=2, embed_dim=64, num_heads=2)),
                   ("vit_base_patch16_xp_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
                   # SigLIP / MAP attention-pool heads (keys: patches; prefix + patches)
                   ("vit_base_patch16_siglip_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
                   ("vit_base_patch16_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4,
                                                 class_token=False, reg_tokens=1, global_pool="map",
                                                 pool_include_prefix=True)),
                   ("vit_tiny_patch16_224", dict(img_size=48, depth=2, global_pool="prr")),
                   # hybrid: ResNet stem, effective stride 32 (16 x patch 2)
                   ("vit_tiny_r_s16_p8_224", dict(img_size=64, depth=2)),
                   # post-norm blocks
                   ("vit_base_patch16_rpn_224", dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
                   # ViTamin: MbConv stem (HybridEmbed, stride 16) then ViT blocks
                   ("vitamin_small_224", dict(img_size=64, depth=2)))

    # ------------------------------------------------------------------ structure
    @classmethod
    def attention_modules_of(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = []
        for i, b in enumerate(model.blocks):
            if hasattr(b, "attns"):      # ParallelThingsBlock: several attention branches
                out += [(f"blocks.{i}.attns.{j}.attn", branch.attn) for j, branch in enumerate(b.attns)]
            elif hasattr(b, "attn"):     # Block, ResPostBlock
                out.append((f"blocks.{i}.attn", b.attn))
            else:                        # ParallelScalingBlock computes its attention itself
                out.append((f"blocks.{i}", b))
        pool = getattr(model, "attn_pool", None)
        if pool is not None:
            out.append(("attn_pool", pool))
        return out

    @property
    def num_heads(self) -> int:
        return max(self.heads_of(i) for i in range(len(self.attention_modules())))

    def heads_of(self, layer: int) -> int:
        return int(self.attention_modules()[layer][1].num_heads)

    def layer_kind(self, layer: int) -> str:
        return "pool" if self.attention_modules()[layer][0] == "attn_pool" else "self"

    def _pool_keys_prefix(self, layout: TokenLayout) -> int:
        """Prefix tokens among the pool head's keys: timm strips them unless ``pool_include_prefix``."""
        return layout.num_prefix_tokens if getattr(self.model, "pool_include_prefix", False) else 0

    def layer_geometry(self, layer: int, layout: TokenLayout, windows: list) -> dict:
        if self.layer_kind(layer) != "pool":
            geo = super().layer_geometry(layer, layout, windows)
            path = self.attention_modules()[layer][0]
            if ".attns." in path:  # a branch of a ParallelThingsBlock: all read the block input
                first = path.rsplit(".attns.", 1)[0] + ".attns.0.attn"
                geo["branch_of"] = [p for p, _m in self.attention_modules()].index(first)
            return geo
        pool = self.attention_modules()[layer][1]
        P = self._pool_keys_prefix(layout)
        n_keys = P + layout.num_patches
        if _cls(pool) == _PRR:
            return dict(num_queries=n_keys, num_keys=n_keys, query_grid=layout.grid_size,
                        key_grid=layout.grid_size, query_prefix=P, key_prefix=P, stride=layout.patch_size)
        return dict(num_queries=int(pool.latent_len), num_keys=n_keys, query_grid=None,
                    key_grid=layout.grid_size, query_prefix=0, key_prefix=P, stride=layout.patch_size)

    def gradcam_points(self) -> tuple[tuple[str, ...], str]:
        """The tokens entering each block's attention, ``[B, T, D]``.

        ``blocks.{i}.norm1`` (pre-norm blocks), ``blocks.{i}.attns.0.norm`` (parallel
        branches: the first branch's normalised input), ``blocks.{i}.in_norm`` (fused
        parallel blocks); for post-norm blocks (``ResPostBlock``, whose ``norm1`` follows
        the attention) the block's input: the previous block's output (``norm_pre`` for
        block 0).
        """
        points = []
        for i, b in enumerate(self.model.blocks):
            if hasattr(b, "attns"):
                points.append(f"blocks.{i}.attns.0.norm")
            elif hasattr(b, "in_norm"):
                points.append(f"blocks.{i}.in_norm")
            elif type(b).__name__ == "ResPostBlock":
                points.append(f"blocks.{i - 1}" if i else "norm_pre")
            else:
                points.append(f"blocks.{i}.norm1")
        return tuple(points), "tokens"

    def forward_kept(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Run the ViT on its prefix tokens and the patch tokens ``keep`` (``[B, k]``) only.

        The image is patch-embedded and the position embeddings are added (timm's
        ``_pos_embed``, prefix tokens included) *before* any token is dropped; the blocks,
        final norm and head then run unchanged on ``[prefix, x[keep[b, 0]], ...]``. With
        every index in order the result is bit-identical to ``model(images)``.
        """
        m = self.model
        x = m._pos_embed(m.patch_embed(images))
        P = self.num_prefix_tokens
        n = x.shape[1] - P
        if keep.dim() != 2 or keep.shape[0] != x.shape[0]:
            raise ValueError(f"keep must be [B, k] patch indices for B={x.shape[0]} images, "
                             f"got shape {tuple(keep.shape)}")
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
            raise ValueError(f"keep holds patch indices outside 0..{n - 1} (this input has {n} patches)")
        idx = keep.to(device=x.device, dtype=torch.long)[:, :, None].expand(-1, -1, x.shape[-1])
        x = torch.cat([x[:, :P], x[:, P:].gather(1, idx)], dim=1)
        x = m.norm(m.blocks(m.norm_pre(m.patch_drop(x))))
        return m.forward_head(x)

    def query_key_modules(self, layer: int) -> tuple[nn.Module, nn.Module]:
        """``...attn.q_norm`` and ``.k_norm`` of a ``timm.layers.Attention`` layer: q and k ``[B, H, T, d]``;
        logits = scale·q·kᵀ (+ mask). Parallel-scaling blocks (q_norm sees ``[B, T, H, d]``) and
        attention-pool heads (latent queries) refuse."""
        path, attn = self.attention_modules()[layer]
        if _cls(attn) != _ATTENTION:
            raise UnsupportedModelError(
                f"layer {layer} ({path}) is a {type(attn).__name__}, not timm's Attention: its q_norm/k_norm "
                f"outputs are not the [B, H, T, d] token queries and keys; pass a layer of a standard block")
        return attn.q_norm, attn.k_norm

    # ------------------------------------------------------------------ recording
    def _expect(self, current: dict[str, TokenLayout], layer: int, n_keys: int, path: str) -> int:
        """Check the keys a layer saw against the layout; return its prefix query rows."""
        layout = current.get("layout")
        geo = None if layout is None else self.layer_geometry(layer, layout, [])
        if geo is None or geo["num_keys"] != n_keys:
            raise UnsupportedModelError(
                f"{path} saw {n_keys} keys but the token layout predicts "
                f"{geo['num_keys'] if geo else 'none (patch_embed did not run)'}; "
                f"this model's forward differs from what vitlens expects")
        return int(geo.get("query_prefix", 0))

    def install(self, stack: ExitStack, layers: list[int], record: RecordFn, *, heads: list[int] | None,
                rows: str, grad: bool, set_layout: Callable[[TokenLayout], None],
                chunk: int | str | None = None) -> None:
        modules = self.attention_modules()
        if rows == "prefix":
            latent = [modules[i][0] for i in layers if _cls(modules[i][1]) == _LATENT]
            if latent:
                raise ValueError(
                    f"rows='prefix' records the prefix-token query rows, but {latent[0]} (layer "
                    f"{layers[[modules[i][0] for i in layers].index(latent[0])]}) is an attention-pool head whose "
                    f"queries are learned latents, not tokens; pass layers= without it, or rows='all'")
        current: dict[str, TokenLayout] = {}
        self._install_layout_hook(stack, set_layout, current)
        head_index = None if heads is None else torch.tensor(heads)

        def select(p: torch.Tensor) -> torch.Tensor:
            return p if head_index is None else p.index_select(1, head_index.to(p.device))

        sdpa, softmax = SdpaTap(), SoftmaxTap()
        for layer in layers:
            path, attn = modules[layer]
            kind = _cls(attn)
            if grad or not getattr(attn, "fused_attn", False):
                if kind in self.attn_drop_classes:  # the probabilities pass through attn_drop
                    def on_probs(_m: nn.Module, _inp: tuple, out: torch.Tensor, layer: int = layer,
                                 path: str = path) -> None:
                        P = self._expect(current, layer, out.shape[-1], path)
                        p = select(out)
                        record(layer, p[:, :, :P] if rows == "prefix" else p)

                    set_unfused(stack, attn)
                    stack.callback(attn.attn_drop.register_forward_hook(on_probs).remove)
                else:  # pool heads: no attn_drop, take the softmax as it is made
                    def on_softmax(out: torch.Tensor, layer: int = layer, path: str = path) -> None:
                        P = self._expect(current, layer, out.shape[-1], path)
                        p = select(out)
                        record(layer, p[:, :, :P] if rows == "prefix" else p)

                    softmax.watch(stack, layer, path, attn, on_softmax)
                    set_unfused(stack, attn)
                continue
            if kind == _ATTENTION and (chunk is None or rows == "prefix"):
                self._install_qk(stack, layer, path, attn, record, select, rows, current)
                continue
            expect = functools.partial(self._expect, current, layer, path=path)
            sdpa.watch(stack, layer, path, attn, sdpa_recorder(record, layer, expect, head_index, rows, chunk,
                                                               sdpa.workspaces))
        sdpa.activate(stack)
        softmax.activate(stack)

    def _install_qk(self, stack: ExitStack, layer: int, path: str, attn: nn.Module, record: RecordFn,
                    select: Callable[[torch.Tensor], torch.Tensor], rows: str,
                    current: dict[str, TokenLayout]) -> None:
        """``timm.layers.Attention``: recompute from its q_norm / k_norm outputs ``[B, H, T, d]``."""
        state: dict[str, Any] = {}

        def on_call(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            state.clear()
            state["attn_mask"] = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
            state["is_causal"] = bool(kwargs.get("is_causal", args[2] if len(args) > 2 else False))

        def on_q(_m: nn.Module, _inp: tuple, q: torch.Tensor) -> None:
            state["q"] = q

        def on_k(_m: nn.Module, _inp: tuple, k: torch.Tensor) -> None:
            q = state.pop("q")
            P = self._expect(current, layer, k.shape[-2], path)
            with torch.no_grad():
                q, k = select(q), select(k)
                p = attention_probs(q, k, float(attn.scale), state.get("attn_mask"), state.get("is_causal", False),
                                    slice(0, P) if rows == "prefix" else slice(None))
            record(layer, p.to(q.dtype) if q.dtype != p.dtype else p)

        stack.callback(attn.register_forward_pre_hook(on_call, with_kwargs=True).remove)
        stack.callback(attn.q_norm.register_forward_hook(on_q).remove)
        stack.callback(attn.k_norm.register_forward_hook(on_k).remove)
