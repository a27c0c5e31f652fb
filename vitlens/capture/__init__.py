"""Hook-based attention recording: ``capture``, ``AttentionCache``, ``TokenLayout``, adapters."""
from .adapters import (Adapter, adapter_for, classifier, logits_of, register_adapter, require_logits,
                       supported_families, supported_models)
from .cache import AttentionCache, TokenLayout
from .recorder import capture

__all__ = ["capture", "AttentionCache", "TokenLayout", "Adapter", "adapter_for",
           "register_adapter", "supported_families", "supported_models", "logits_of", "classifier",
           "require_logits"]
