"""gemma3-edge: an on-device quantized runtime for Gemma 3."""

from gemma3_edge._default_model import default_model_path
from gemma3_edge.model import GenerationStats, Model, ModelLoadError

__all__ = ["GenerationStats", "Model", "ModelLoadError", "default_model_path"]
__version__ = "0.1.0"
