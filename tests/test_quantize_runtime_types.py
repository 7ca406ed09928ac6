"""The runtime's loading of the project's tensor types (ids 1024-1026, docs/formats.md).

Values must be bit-identical to the converter's reading of the same bytes. The int8 and int4
types must repack into the integer layout of the ggml type with the same grid."""

from __future__ import annotations

import numpy as np
import pytest

from gemma3_edge import _core
from gemma3_edge.quantize.formats import FORMATS, Grid, dequantize, pack
from gemma3_edge.quantize.rounding import round_nearest
from gemma3_edge.quantize.scales import fit_grid

PROJECT = ["G3E_I8_ROW", "G3E_I4_ROW", "G3E_SFP8"]
ROWS, COLS = 20, 384  # 20 rows: one full and one partial 16-row tile; 3 blocks of 128


def weights(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(5, size=(ROWS, COLS)) * rng.uniform(0.01, 0.05, size=(ROWS, 1))).astype(np.float32)


def encoded(name: str, w: np.ndarray):
    fmt = FORMATS[name]
    grid = fit_grid(fmt, w, None, search=False)
    codes = round_nearest(w, grid)
    return fmt, grid, codes, pack(fmt, codes, grid)


@pytest.mark.parametrize("name", PROJECT)
def test_project_types_read_bit_for_bit(name):
    fmt, _, _, raw = encoded(name, weights())
    expected = dequantize(fmt, raw, ROWS, COLS)
    assert _core.ggml_type_name(fmt.type_id) == name.lower()
    flat = _core.dequantize(fmt.type_id, raw.tobytes(), ROWS * COLS).reshape(ROWS, COLS)
    assert np.array_equal(flat.view(np.uint32), expected.view(np.uint32))
    for mode in ("quantized", "f32"):
        packed = _core.PackedWeight(fmt.type_id, raw, ROWS, COLS, mode=mode)
        rows = np.stack([packed.dequantize_row(r) for r in range(ROWS)])
        assert np.array_equal(rows.view(np.uint32), expected.view(np.uint32)), mode


@pytest.mark.parametrize("name, ggml", [("G3E_I4_ROW", "Q4_0"), ("G3E_I8_ROW", "Q8_0")])
def test_integer_types_share_ggml_kernels(name, ggml):
    # The same codes and f16 scales written as the project type and as the ggml type with blocks
    # of 32 must repack into the same integer layout, so every product is bit-identical.
    fmt, grid, codes, raw = encoded(name, weights(1))
    std = FORMATS[ggml]
    repeat = fmt.group_size // std.group_size
    std_grid = Grid(std, np.repeat(grid.scale, repeat, axis=1), np.zeros((ROWS, COLS // std.group_size), np.float32))
    std_raw = pack(std, codes, std_grid)
    ours = _core.PackedWeight(fmt.type_id, raw, ROWS, COLS)
    theirs = _core.PackedWeight(std.type_id, std_raw, ROWS, COLS)
    assert ours.layout.startswith("i")  # the integer layout, not "f32 (converted ...)"
    assert ours.layout.replace(name.lower(), ggml.lower()) == theirs.layout
    assert ours.bytes == theirs.bytes
    x = np.random.default_rng(2).standard_normal((5, COLS)).astype(np.float32)
    for m in (1, 5):
        assert np.array_equal(ours.matmul(x[:m]).view(np.uint32), theirs.matmul(x[:m]).view(np.uint32)), m


def test_sfp8_runs_on_the_float_path():
    fmt, _, _, raw = encoded("G3E_SFP8", weights(3))
    values = dequantize(fmt, raw, ROWS, COLS)
    ours = _core.PackedWeight(fmt.type_id, raw, ROWS, COLS)
    reference = _core.PackedWeight(FORMATS["F32"].type_id, values, ROWS, COLS)
    assert ours.layout == "f32 (converted from g3e_sfp8)"
    x = np.random.default_rng(4).standard_normal((3, COLS)).astype(np.float32)
    assert np.array_equal(ours.matmul(x).view(np.uint32), reference.matmul(x).view(np.uint32))


@pytest.mark.parametrize("name", PROJECT)
def test_partial_block_row_rejected(name):
    fmt = FORMATS[name]
    with pytest.raises(ValueError, match="block size 128"):
        _core.PackedWeight(fmt.type_id, np.zeros(4 * fmt.type_size, np.uint8), 4, 96)
