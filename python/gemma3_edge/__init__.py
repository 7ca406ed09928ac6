"""gemma3-edge: an on-device quantized runtime for Gemma 3."""

from gemma3_edge import _core

__all__ = ["_core"]
__version__ = "0.1.0"
