"""vitlens: see and measure what Vision Transformers attend to.

Quick start::

    import vitlens
    model, cfg = vitlens.load_model("demo")
    img = vitlens.load_image("examples/chelsea.jpg")
    x = vitlens.preprocess(img, cfg).tensor[None]
    with vitlens.capture(model) as cache:
        logits = model(x)
    cls_map = vitlens.cls_attention(cache, layer=-1)   # [1, gh, gw]
    roll = vitlens.rollout(cache)                        # [1, gh, gw], sums to 1

The core (capture, analysis, models, data) imports without matplotlib, OpenCV, h5py or
click; ``vitlens.export`` and the CLI bring those in when used.
"""
from .analysis import (AttentionMaps, ShapeBiasResult, attention_maps, attention_received, cls_attention, rollout,
                       shape_bias)
from .analysis import reductions
from .analysis.artefacts import HighNormTokens, high_norm_tokens
from .analysis.distance import HeadStatistics, attention_entropy, head_statistics, mean_attention_distance
from .analysis import METHODS as EXPLAIN_METHODS, Explanation, explain, explanation
from .analysis.registry import Method, methods, register_method
from .analysis.faithfulness import (FaithfulnessResult, deletion_curve, evaluate, insertion_curve,
                                    perturbation_curve, token_drop_curve)
from .analysis.importance import KeepRatioCurve, keep_ratio_curve, keep_tokens, token_importance
from .capture import AttentionCache, TokenLayout, capture, register_adapter, supported_families
from .capture.cache import WindowLayout
from .data import find_images, load_image
from .errors import (CheckpointError, ImageLoadError, UnsupportedModelError, VitlensError,
                     WeightsUnavailableError)
from .models import (DEFAULT_MODEL, DEMO_NAME, LoadedModel, class_names, load_model,
                     make_transform, preprocess)
from .explore import Explorer, explore
from . import export  # vitlens.export.read(...); lazy: h5py/cv2/matplotlib load on first use
from . import pl  # vitlens.pl.faithfulness(result) ...: one plot per result; matplotlib loads on first use

__version__ = "0.1.0"

__all__ = [
    "capture", "AttentionCache", "TokenLayout", "WindowLayout", "register_adapter", "supported_families",
    "cls_attention", "rollout", "attention_received", "attention_maps", "AttentionMaps",
    "shape_bias", "ShapeBiasResult",
    "load_model", "LoadedModel", "class_names", "preprocess", "make_transform",
    "DEFAULT_MODEL", "DEMO_NAME",
    "load_image", "find_images",
    "VitlensError", "ImageLoadError", "UnsupportedModelError", "CheckpointError",
    "WeightsUnavailableError",
]
__all__ += ["mean_attention_distance", "attention_entropy", "HeadStatistics", "head_statistics"]
__all__ += ["high_norm_tokens", "HighNormTokens"]
__all__ += ["reductions"]
__all__ += ["explain", "explanation", "Explanation", "EXPLAIN_METHODS", "methods", "Method", "register_method"]
__all__ += ["deletion_curve", "insertion_curve", "perturbation_curve", "token_drop_curve"]
__all__ += ["explore", "Explorer"]

__all__ += ["pl"]
__all__ += ["evaluate", "FaithfulnessResult", "token_importance", "keep_tokens", "keep_ratio_curve", "KeepRatioCurve"]
