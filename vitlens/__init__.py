"""vitlens: see and measure what Vision Transformers attend to."""
__version__ = "0.1.0"
