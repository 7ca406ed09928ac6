"""The GGUF loader rejects malformed and unsupported files with ModelLoadError (a ValueError)
that names the file and the problem, and loads well-formed tiny models."""

from __future__ import annotations

import struct

import gguf
import pytest

gemma3_edge = pytest.importorskip("gemma3_edge")
from tiny_gguf import write_tiny_gemma3  # noqa: E402


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_gemma3(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def load(path, **kwargs):
    return gemma3_edge.Model(path, n_ctx=64, n_threads=1, **kwargs)


def test_tiny_model_loads(tiny_path):
    model = load(tiny_path)
    config = model.config
    assert config["n_layers"] == 2
    assert config["layer_types"] == ["sliding", "sliding"]
    assert config["sliding_window"] == 8
    assert model.logits([2, 260, 261]).shape == (3, config["vocab_size"])


def test_layer_pattern_every_sixth_global(tmp_path):
    model = load(write_tiny_gemma3(tmp_path / "t.gguf", n_layers=12))
    types = model.config["layer_types"]
    assert [i for i, t in enumerate(types) if t == "global"] == [5, 11]


def test_model_load_error_is_value_error():
    assert issubclass(gemma3_edge.ModelLoadError, ValueError)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load(tmp_path / "nope.gguf")


def test_wrong_magic(tmp_path, tiny_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + tiny_path.read_bytes()[4:])
    with pytest.raises(gemma3_edge.ModelLoadError, match="not a GGUF file"):
        load(bad)


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_unsupported_version(tmp_path, tiny_path, version):
    data = bytearray(tiny_path.read_bytes())
    data[4:8] = struct.pack("<I", version)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(gemma3_edge.ModelLoadError, match=f"version {version} is not supported"):
        load(bad)


def test_truncated_anywhere(tmp_path, tiny_path):
    data = tiny_path.read_bytes()
    reader = gguf.GGUFReader(str(tiny_path))
    data_start = reader.data_offset
    # Dense cuts through the header, metadata and tensor table, sparse ones through the data.
    cuts = sorted(set(list(range(0, min(data_start, 4096), 7)) + list(range(data_start, len(data), 9973)) + [len(data) - 1]))
    bad = tmp_path / "cut.gguf"
    for cut in cuts:
        bad.write_bytes(data[:cut])
        with pytest.raises(gemma3_edge.ModelLoadError) as info:
            load(bad)
        assert str(bad) in str(info.value), f"cut at {cut}: message does not name the file: {info.value}"


def test_huge_metadata_count(tmp_path, tiny_path):
    data = bytearray(tiny_path.read_bytes())
    data[16:24] = struct.pack("<Q", 2**63 + 5)  # kv_count
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(gemma3_edge.ModelLoadError, match="metadata count"):
        load(bad)


def test_huge_tensor_count(tmp_path, tiny_path):
    data = bytearray(tiny_path.read_bytes())
    data[8:16] = struct.pack("<Q", 2**64 - 1)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(gemma3_edge.ModelLoadError, match="tensor count"):
        load(bad)


def test_huge_key_length(tmp_path, tiny_path):
    data = bytearray(tiny_path.read_bytes())
    data[24:32] = struct.pack("<Q", 2**64 - 2)  # length of the first key
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(gemma3_edge.ModelLoadError, match="truncated"):
        load(bad)


def test_wrong_architecture(tmp_path):
    path = write_tiny_gemma3(tmp_path / "llama.gguf", architecture="llama")
    with pytest.raises(gemma3_edge.ModelLoadError, match="architecture 'llama' is not supported"):
        load(path)


def test_missing_tensor(tmp_path):
    path = write_tiny_gemma3(tmp_path / "t.gguf", skip_tensors=("blk.1.ffn_up.weight",))
    with pytest.raises(gemma3_edge.ModelLoadError, match="'blk.1.ffn_up.weight' is missing"):
        load(path)


def test_vocabulary_disagrees_with_embedding(tmp_path):
    path = write_tiny_gemma3(tmp_path / "t.gguf", vocab_rows_extra=3)
    with pytest.raises(gemma3_edge.ModelLoadError, match="vocabulary sizes must agree"):
        load(path)


def test_nan_norm_weight(tmp_path):
    path = write_tiny_gemma3(tmp_path / "t.gguf", nan_tensor="blk.0.ffn_norm.weight")
    with pytest.raises(gemma3_edge.ModelLoadError, match="'blk.0.ffn_norm.weight' contains NaN"):
        load(path)


@pytest.mark.parametrize("weight_type", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16"])
def test_quantized_tiny_models_run(tmp_path, weight_type):
    qtype = gguf.GGMLQuantizationType[weight_type]
    path = write_tiny_gemma3(tmp_path / "t.gguf", weight_type=qtype)
    quantized = load(path).logits([2, 260, 261, 262])
    reference = load(path, precision="f32").logits([2, 260, 261, 262])
    assert quantized.shape == reference.shape
    # Same weights on both paths; only the activation rounding of the quantized kernels differs.
    scale = abs(reference).max()
    assert abs(quantized - reference).max() <= 0.05 * scale
