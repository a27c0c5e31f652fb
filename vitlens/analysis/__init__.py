"""Pure analyses: a cache in, tensors shaped by the TokenLayout out."""
from .cls_attention import HEAD_FUSIONS, cls_attention, fuse_heads
from .artefacts import HighNormTokens, high_norm_tokens
from .distance import HeadStatistics, attention_entropy, head_statistics, mean_attention_distance
from .explain import METHODS, Explanation, explain, explanation
from .registry import Method, methods, register_method
from .faithfulness import FaithfulnessResult, evaluate
from .importance import KeepRatioCurve, keep_ratio_curve, keep_tokens, token_importance
from .maps import AttentionMaps, attention_maps
from .received import attention_received
from . import reductions
from .rollout import rollout
from .shape_bias import ShapeBiasResult, shape_bias

__all__ = ["cls_attention", "rollout", "attention_received", "attention_maps", "AttentionMaps", "METHODS",
           "fuse_heads", "HEAD_FUSIONS", "shape_bias", "ShapeBiasResult"]
__all__ += ["mean_attention_distance", "attention_entropy", "HeadStatistics", "head_statistics"]
__all__ += ["high_norm_tokens", "HighNormTokens"]
__all__ += ["explain", "explanation", "Explanation", "methods", "Method", "register_method"]
__all__ += ["evaluate", "FaithfulnessResult", "token_importance", "keep_tokens", "keep_ratio_curve", "KeepRatioCurve"]
