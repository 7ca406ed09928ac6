"""Round trips, grid detection and rounding of the converter's tensor formats (no model needed)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from gemma3_edge.quantize import formats
from gemma3_edge.quantize.formats import FORMATS, dequantize, grid_values, pack
from gemma3_edge.quantize.grid import detect_grid
from gemma3_edge.quantize.rounding import round_gptq, round_nearest
from gemma3_edge.quantize.scales import fit_grid

QUANTIZED = [name for name, f in FORMATS.items() if f.kind != "float"]
AFFINE_OR_SYMMETRIC = [name for name in QUANTIZED if FORMATS[name].kind != "sfp8"]


def heavy_tailed(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Weights like a trained layer's: Student-t rows with per-row scales."""
    rng = np.random.default_rng(seed)
    return (rng.standard_t(5, size=(rows, cols)) * rng.uniform(0.01, 0.05, size=(rows, 1))).astype(np.float32)


def encode(name: str, w: np.ndarray, search: bool = False):
    fmt = FORMATS[name]
    g = fit_grid(fmt, w, None, search=search)
    codes = round_nearest(w, g)
    scale, offset = g.expand()
    return fmt, g, codes, grid_values(codes, scale, offset, fmt)


@pytest.mark.parametrize("name", QUANTIZED)
def test_packed_bytes_decode_to_grid_values(name):
    # The packer and the dequantizer (gguf-py's for ggml types) must agree on every bit.
    w = heavy_tailed(4, 512)
    fmt, g, codes, values = encode(name, w)
    raw = pack(fmt, codes, g)
    assert raw.shape == (4, formats.row_bytes(fmt, 512))
    assert np.array_equal(dequantize(fmt, raw, 4, 512), values)


@pytest.mark.parametrize("name", AFFINE_OR_SYMMETRIC)
def test_rounding_error_within_half_step(name):
    # Without the clipping search, nearest rounding misses a weight inside its grid's range by
    # at most half a step. Symmetric formats map the extreme to qmin, so weights on the other
    # side beyond qmax * d are clipped by less than one step. The f16 scale is rounded by up to
    # 2^-11 relative, which can move the extreme by one code: allowance |w| * 2^-10.
    w = heavy_tailed(8, 512, seed=1)
    fmt, g, codes, values = encode(name, w)
    scale, offset = g.expand()
    allowance = np.abs(w) * 2.0**-10 + 1e-12
    low = np.minimum(scale * fmt.qmin, scale * fmt.qmax) + offset
    high = np.maximum(scale * fmt.qmin, scale * fmt.qmax) + offset
    inside = (w >= low) & (w <= high)
    error = np.abs(values - w)
    assert np.all(error[inside] <= (np.abs(scale) / 2 + allowance)[inside])
    assert np.all(error <= np.abs(scale) + allowance)


def test_sfp8_table():
    mags = formats.SFP8_MAGNITUDES
    assert mags.max() == np.float32(1.875)
    assert mags[mags > 0].min() == np.float32(2.0**-23 * 1.25)  # code 1: e = 0, m = 1
    assert len(np.unique(mags)) == 128
    codes = np.arange(256, dtype=np.uint8)
    decoded = formats.sfp8_decode(codes)
    again = formats.sfp8_encode(decoded)
    nonzero = (codes & 0x7F) != 0
    assert np.array_equal(again[nonzero], codes[nonzero])


def test_sfp8_relative_error():
    # Values in [2^-7, 1.875] have 3 mantissa bits: relative error <= 2^-4 after rounding.
    rng = np.random.default_rng(2)
    x = rng.uniform(2.0**-7, 1.875, size=10000).astype(np.float32) * rng.choice([-1, 1], size=10000)
    y = formats.sfp8_decode(formats.sfp8_encode(x))
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0**-4)


@pytest.mark.parametrize("name", AFFINE_OR_SYMMETRIC)
def test_search_never_worse_than_range(name):
    w = heavy_tailed(16, 512, seed=3)
    _, _, _, plain = encode(name, w, search=False)
    _, _, _, searched = encode(name, w, search=True)
    assert ((searched - w) ** 2).sum() <= ((plain - w) ** 2).sum() * (1 + 1e-6)


@pytest.mark.parametrize("name", AFFINE_OR_SYMMETRIC)
def test_grid_detection_exact_on_grid(name):
    w = heavy_tailed(8, 512, seed=4)
    fmt, _, _, values = encode(name, w, search=True)
    found = detect_grid(fmt, values)
    assert found is not None
    codes, g = found
    assert np.array_equal(dequantize(fmt, pack(fmt, codes, g), *values.shape), values)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_grid_detection_recovers_gguf_blocks(name):
    # gguf-py's reference quantizers (ports of llama.cpp's) produce the blocks; detection on
    # their dequantized values must give the same bytes.
    qtype = gguf.GGMLQuantizationType[name]
    w = heavy_tailed(8, 512, seed=5)
    raw = gguf.quants.quantize(w, qtype)
    values = gguf.quants.dequantize(raw, qtype)
    found = detect_grid(FORMATS[name], values)
    assert found is not None
    assert pack(FORMATS[name], *found).tobytes() == raw.tobytes()


def random_kquant_blocks(name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Valid K-quant blocks with random codes, 6-bit (or int8) sub-scales and f16 scales:
    harder than a quantizer's output, because sub-block minima often have codes above 0."""
    rng = np.random.default_rng(seed)
    fmt = FORMATS[name]
    raw = rng.integers(0, 256, size=(n_blocks, fmt.type_size), dtype=np.uint8)
    d = (rng.uniform(1e-4, 1e-3, size=(n_blocks, 1))).astype(np.float16).view(np.uint8)
    if name == "Q6_K":
        raw[:, 208:210] = d
    else:
        dmin = (rng.uniform(1e-4, 1e-3, size=(n_blocks, 1))).astype(np.float16).view(np.uint8)
        raw[:, 0:2] = d
        raw[:, 2:4] = dmin
    return raw


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_grid_detection_recovers_kquant_blocks(name):
    qtype = gguf.GGMLQuantizationType[name]
    raw = random_kquant_blocks(name, 8 * 2, seed=11).reshape(8, -1)
    values = gguf.quants.dequantize(raw, qtype)
    found = detect_grid(FORMATS[name], values)
    assert found is not None
    back = gguf.quants.dequantize(pack(FORMATS[name], *found), qtype)
    assert np.array_equal(back, values)


@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_grid_detection_rejects_off_grid(name):
    w = heavy_tailed(8, 512, seed=6)
    assert detect_grid(FORMATS[name], w) is None


def test_grid_detection_rejects_perturbed_grid():
    w = heavy_tailed(8, 512, seed=7)
    fmt, _, _, values = encode("Q4_0", w)
    values = values.copy()
    values[3, 100] = np.nextafter(values[3, 100], np.float32(1))
    assert detect_grid(fmt, values) is None


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "G3E_I4_ROW"])
def test_gptq_lowers_output_error(name):
    # Inputs with correlated channels: GPTQ's error feedback must beat nearest rounding on the
    # layer output error trace(dW H dW^T), the quantity it minimises.
    rng = np.random.default_rng(8)
    mix = rng.standard_normal((256, 256)) / 16
    x = rng.standard_normal((2048, 256)) @ (np.eye(256) + mix)
    h = x.T @ x
    w = heavy_tailed(64, 256, seed=9)
    fmt = FORMATS[name]
    g = fit_grid(fmt, w, np.diag(h).astype(np.float32) / len(x))
    scale, offset = g.expand()

    def output_error(codes):
        delta = grid_values(codes, scale, offset, fmt).astype(np.float64) - w
        return float(np.einsum("ij,ij->", delta @ h, delta))

    assert output_error(round_gptq(w, g, h)) < 0.8 * output_error(round_nearest(w, g))


def test_row_formats_share_one_scale_per_row():
    w = heavy_tailed(4, 384, seed=10)
    for name in ("G3E_I8_ROW", "G3E_I4_ROW"):
        g = fit_grid(FORMATS[name], w, None)
        assert g.scale.shape == (4, 3)
        assert np.all(g.scale == g.scale[:, :1])


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.1.attn_v.weight", "blk.0.attn_output.weight",
                                  "blk.0.ffn_down.weight", "blk.6.ffn_down.weight"])
def test_grid_detection_on_default_model(default_model_file, name):
    # The default GGUF mixes Q5_0, Q8_0, Q4_K and Q6_K tensors made by llama-quantize. Their
    # dequantized values must be found on the same type's grid and re-encode to equal values;
    # Q5_0, Q8_0 and Q4_K blocks come back byte for byte (Q6_K may flip the signs of a block's
    # scale and codes together, which changes no value).
    reader = gguf.GGUFReader(str(default_model_file))
    tensor = next(t for t in reader.tensors if t.name == name)
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    fmt = FORMATS[tensor.tensor_type.name]
    found = detect_grid(fmt, values)
    assert found is not None
    raw = pack(fmt, *found)
    assert np.array_equal(dequantize(fmt, raw, *values.shape), values)
    if fmt.name != "Q6_K":
        assert raw.tobytes() == np.asarray(tensor.data).tobytes()
