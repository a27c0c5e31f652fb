"""Exception types users can catch. Each is a ValueError so generic handlers still work."""
from __future__ import annotations


class VitlensError(ValueError):
    """Base class: a user-facing error whose message says what was wrong and what to do."""


class ImageLoadError(VitlensError):
    """An input could not be read as an image (missing, not an image, truncated, too large...)."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")


class UnsupportedModelError(VitlensError):
    """The model has no token self-attention that vitlens knows how to record."""


class CheckpointError(VitlensError):
    """A checkpoint file could not be used with the requested model."""


class WeightsUnavailableError(VitlensError):
    """Pretrained weights could not be obtained (offline and not in the local cache)."""
