"""Quantization-aware conversion of Gemma 3 checkpoints into the runtime's GGUF files.

convert() reads a Hugging Face checkpoint directory or a GGUF file and writes a GGUF whose
tensors use ggml's standard types where they fit (llama.cpp loads those files) and the
project's own formats (per-channel int8/int4, SFP8; docs/formats.md) where asked. quality()
compares a converted file with its source on text, as llama-perplexity --kl-divergence does.
"""

from .convert import ConvertOptions, ConvertReport, convert
from .formats import FORMATS
from .quality import quality
from .schemes import PRESETS, SCHEMES
from .source import UnsupportedModelError

__all__ = ["ConvertOptions", "ConvertReport", "FORMATS", "PRESETS", "SCHEMES", "UnsupportedModelError",
           "convert", "quality"]
