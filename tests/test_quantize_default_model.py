"""Lossless conversion of the default model (Gemma 3 270M Q4_K_M) and of its float32
dequantization: grid detection must give back every tensor's values."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest

from gemma3_edge.quantize import ConvertOptions, convert


def tensor_values(path) -> dict[str, tuple[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, gguf.quants.dequantize(t.data, t.tensor_type)) for t in reader.tensors}


def test_lossless_copy_of_default_model(default_model_file, tmp_path):
    out = tmp_path / "lossless.gguf"
    report = convert(default_model_file, out, ConvertOptions(preset="lossless", progress=False))
    assert {t.method for t in report.tensors if t.role != "norm"} == {"copy"}
    source = gguf.GGUFReader(str(default_model_file))
    ours = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    for t in source.tensors:
        assert ours[t.name].tensor_type == t.tensor_type, t.name
        assert np.asarray(ours[t.name].data).tobytes() == np.asarray(t.data).tobytes(), t.name


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GEMMA3_EDGE_FULL_MODEL_TESTS") != "1",
                    reason="writes a 1 GB float32 file; set GEMMA3_EDGE_FULL_MODEL_TESTS=1 to run")
def test_lossless_from_f32_dequantization(default_model_file, tmp_path):
    # Every tensor of the float32 dequantization must come back on its original grid.
    dequantized = tmp_path / "f32.gguf"
    convert(default_model_file, dequantized, ConvertOptions(preset="f32", progress=False))
    out = tmp_path / "lossless.gguf"
    report = convert(dequantized, out, ConvertOptions(preset="lossless", progress=False))
    dequantized.unlink()
    assert {t.method for t in report.tensors if t.role != "norm"} == {"grid"}
    source = tensor_values(default_model_file)
    ours = tensor_values(out)
    for name, (type_name, values) in source.items():
        assert ours[name][0] == type_name, name
        assert np.array_equal(ours[name][1], values), name
