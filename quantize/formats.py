"""Tensor storage formats: ggml block layouts and the project's own types.

Every format is described as an affine grid per group of weights, value = scale * code + offset,
evaluated in float32 in the order the runtime's dequantization uses, plus a packer that turns
(codes, grid parameters) into the format's bytes. SFP8 is the one non-affine format: its code
indexes a table of 8-bit floats, times a block scale.

ggml layouts follow ggml-common.h in llama.cpp (the runtime's src/cpp/kernels/ggml_types.cpp
and gguf-py's gguf.quants dequantize the same bytes). The project's types are documented in
docs/formats.md and dequantized in src/cpp/kernels/g3e_types.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Type ids of the project's formats. ggml assigns ids below 64; 1024 and up are left free.
G3E_I8_ROW = 1024
G3E_I4_ROW = 1025
G3E_SFP8 = 1026

# Elements per block of the project's formats. 128 divides every row width of the released
# Gemma 3 sizes (640, 1152, 2560, 3840, 5376 and their feed-forward widths).
G3E_BLOCK = 128


@dataclass(frozen=True)
class Format:
    """A storage format: ids, block geometry and the grid the quantizers search."""

    name: str
    type_id: int
    block_size: int          # elements per block
    type_size: int           # bytes per block
    group_size: int          # elements sharing one (scale, offset); 0 for unquantized types
    qmin: int = 0
    qmax: int = 0
    affine: bool = False     # has an offset (a zero point / min), not only a scale
    kind: str = "block"      # "float", "block", "kquant", "row" (one scale per output row) or "sfp8"
    standard: bool = True    # a ggml type that llama.cpp loads

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("F32", 0, 1, 4, 0, kind="float"),
    Format("F16", 1, 1, 2, 0, kind="float"),
    Format("BF16", 30, 1, 2, 0, kind="float"),
    Format("Q8_0", 8, 32, 34, 32, -128, 127),
    Format("Q4_0", 2, 32, 18, 32, -8, 7),
    Format("Q4_1", 3, 32, 20, 32, 0, 15, affine=True),
    Format("Q5_0", 6, 32, 22, 32, -16, 15),
    Format("Q5_1", 7, 32, 24, 32, 0, 31, affine=True),
    Format("Q4_K", 12, 256, 144, 32, 0, 15, affine=True, kind="kquant"),
    Format("Q5_K", 13, 256, 176, 32, 0, 31, affine=True, kind="kquant"),
    Format("Q6_K", 14, 256, 210, 16, -32, 31, kind="kquant"),
    Format("G3E_I8_ROW", G3E_I8_ROW, G3E_BLOCK, G3E_BLOCK + 2, G3E_BLOCK, -127, 127,
           kind="row", standard=False),
    Format("G3E_I4_ROW", G3E_I4_ROW, G3E_BLOCK, G3E_BLOCK // 2 + 2, G3E_BLOCK, -8, 7,
           kind="row", standard=False),
    Format("G3E_SFP8", G3E_SFP8, G3E_BLOCK, G3E_BLOCK + 2, G3E_BLOCK, kind="sfp8", standard=False),
]}

FORMATS_BY_ID = {f.type_id: f for f in FORMATS.values()}


def format_by_name(name: str) -> Format:
    try:
        return FORMATS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown tensor format {name!r}; known formats: {', '.join(FORMATS)}") from None


# SFP8 ------------------------------------------------------------------------------------------
# Switched floating point (gemma.cpp's SFP, used for the Gemma 3 report's SFP8 checkpoints):
# sign bit, then either a 3-bit exponent and 3-bit mantissa for magnitudes in [2^-7, 1.875]
# (bit 6 set) or a 4-bit exponent and 2-bit mantissa for magnitudes in [2^-23, 2^-7) (bit 6
# clear). Code 0 (and 0x80) is zero, in place of the smallest small-range value 2^-23.

def _sfp8_magnitudes() -> np.ndarray:
    table = np.zeros(128, dtype=np.float64)
    for code in range(128):
        if code & 0x40:
            exponent, mantissa = (code >> 3) & 7, code & 7
            table[code] = 2.0 ** (exponent - 7) * (1 + mantissa / 8)
        elif code:
            exponent, mantissa = (code >> 2) & 15, code & 3
            table[code] = 2.0 ** (exponent - 23) * (1 + mantissa / 4)
    return table.astype(np.float32)


SFP8_MAGNITUDES = _sfp8_magnitudes()
SFP8_MAX = float(SFP8_MAGNITUDES.max())  # 1.875
# Codes sorted by magnitude, and the midpoints between neighbours, for nearest-value encoding.
_SFP8_ORDER = np.argsort(SFP8_MAGNITUDES, kind="stable").astype(np.uint8)
_SFP8_SORTED = SFP8_MAGNITUDES[_SFP8_ORDER].astype(np.float64)
_SFP8_MIDPOINTS = (_SFP8_SORTED[1:] + _SFP8_SORTED[:-1]) / 2


def sfp8_encode(x: np.ndarray) -> np.ndarray:
    """Encode float values (|x| <= 1.875 after scaling) to the nearest SFP8 code, uint8."""
    magnitude = np.minimum(np.abs(x.astype(np.float64)), SFP8_MAX)
    index = np.searchsorted(_SFP8_MIDPOINTS, magnitude, side="left")
    codes = _SFP8_ORDER[index]
    return codes | np.where(np.signbit(x) & (codes != 0), np.uint8(0x80), np.uint8(0))


def sfp8_decode(codes: np.ndarray) -> np.ndarray:
    values = SFP8_MAGNITUDES[codes & 0x7F]
    return np.where(codes & 0x80, -values, values).astype(np.float32)


# Grids -----------------------------------------------------------------------------------------

@dataclass
class Grid:
    """Quantization grid of one tensor [rows, cols] in a format.

    scale and offset are float32 [rows, cols // group_size]: value = fl(fl(scale * code) + offset)
    for affine formats (offset is 0 for symmetric ones), scale * sfp8(code) for SFP8. extra keeps
    the format's stored parameters that the packer needs (f16 super-block scales, 6-bit
    sub-block scales and mins).
    """

    fmt: Format
    scale: np.ndarray
    offset: np.ndarray
    extra: dict = field(default_factory=dict)

    def expand(self, cols: slice | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return per-element scale and offset for the given columns (all if None)."""
        g = self.fmt.group_size
        if cols is None:
            return np.repeat(self.scale, g, axis=1), np.repeat(self.offset, g, axis=1)
        if isinstance(cols, int):
            return self.scale[:, cols // g], self.offset[:, cols // g]
        index = np.arange(cols.start, cols.stop) // g
        return self.scale[:, index], self.offset[:, index]


def round_to_grid(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, fmt: Format) -> np.ndarray:
    """Nearest codes for x under per-element (or broadcast) scale and offset."""
    if fmt.kind == "sfp8":
        safe = np.where(scale == 0, 1, scale)
        return sfp8_encode(x / safe)
    safe = np.where(scale == 0, 1, scale)
    codes = np.rint((x - offset) / safe)
    return np.clip(codes, fmt.qmin, fmt.qmax).astype(np.int32)


def grid_values(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, fmt: Format) -> np.ndarray:
    """Dequantized float32 values, bit-identical to the runtime's dequantization."""
    scale = np.asarray(scale, dtype=np.float32)
    if fmt.kind == "sfp8":
        return (scale * sfp8_decode(codes)).astype(np.float32)
    product = (scale * codes.astype(np.float32)).astype(np.float32)
    if not fmt.affine:
        return product
    return (product + np.asarray(offset, dtype=np.float32)).astype(np.float32)


# Packing ---------------------------------------------------------------------------------------

def _f16_bytes(values: np.ndarray) -> np.ndarray:
    """float32 [..., k] already representable in f16 -> uint8 [..., 2k]."""
    half = values.astype(np.float16)
    return half.view(np.uint8).reshape(*values.shape[:-1], -1)


def _nibbles(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (low.astype(np.uint8) & 0x0F) | ((high.astype(np.uint8) & 0x0F) << 4)


def pack(fmt: Format, codes: np.ndarray, grid: Grid | None, values: np.ndarray | None = None) -> np.ndarray:
    """Bytes of a tensor [rows, cols] as uint8 [rows, cols // block_size * type_size]."""
    if fmt.kind == "float":
        if fmt.name == "F32":
            return np.ascontiguousarray(values, dtype=np.float32).view(np.uint8)
        if fmt.name == "F16":
            return np.ascontiguousarray(values.astype(np.float16)).view(np.uint8)
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        # Round to nearest even, as torch and gguf-py convert float32 to bfloat16.
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        rounded = np.where(np.isnan(values), np.uint16(0x7FC0), rounded)
        return rounded.view(np.uint8)

    rows, cols = codes.shape
    nb = cols // fmt.block_size
    bs = fmt.block_size
    c = codes.reshape(rows, nb, bs)
    name = fmt.name
    if name in ("Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1"):
        d = _f16_bytes(grid.scale.reshape(rows, nb, 1))
        parts = [d]
        if fmt.affine:
            parts.append(_f16_bytes(grid.offset.reshape(rows, nb, 1)))
        if name == "Q8_0":
            parts.append(c.astype(np.int8).view(np.uint8))
        else:
            u = (c - fmt.qmin).astype(np.uint32)  # unsigned code 0 .. 2^bits - 1
            if name in ("Q5_0", "Q5_1"):
                high = ((u >> 4) & 1) << np.arange(32, dtype=np.uint32)
                qh = np.bitwise_or.reduce(high, axis=2).astype("<u4")
                parts.append(qh.reshape(rows, nb, 1).view(np.uint8))
            parts.append(_nibbles(u[:, :, :16], u[:, :, 16:]))
        return np.concatenate(parts, axis=2).reshape(rows, nb * fmt.type_size)
    if name in ("Q4_K", "Q5_K"):
        e = grid.extra
        sc = e["sc"].reshape(rows, nb, 8).astype(np.uint8)
        mn = e["m"].reshape(rows, nb, 8).astype(np.uint8)
        scales = np.empty((rows, nb, 12), dtype=np.uint8)
        scales[:, :, 0:4] = (sc[:, :, 0:4] & 63) | ((sc[:, :, 4:8] >> 4) << 6)
        scales[:, :, 4:8] = (mn[:, :, 0:4] & 63) | ((mn[:, :, 4:8] >> 4) << 6)
        scales[:, :, 8:12] = (sc[:, :, 4:8] & 0xF) | ((mn[:, :, 4:8] & 0xF) << 4)
        u = c.astype(np.uint32).reshape(rows, nb, 4, 2, 32)  # [pair j, half h, l]
        qs = _nibbles(u[:, :, :, 0, :], u[:, :, :, 1, :]).reshape(rows, nb, 128)
        parts = [_f16_bytes(e["d"].reshape(rows, nb, 1)), _f16_bytes(e["dmin"].reshape(rows, nb, 1)), scales]
        if name == "Q5_K":
            high = (u >> 4) & 1  # [rows, nb, j, h, l]
            shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint32)
            qh = np.bitwise_or.reduce(
                (high << shifts[None, None, :, :, None]).reshape(rows, nb, 8, 32), axis=2)
            parts.append(qh.astype(np.uint8))
        parts.append(qs)
        return np.concatenate(parts, axis=2).reshape(rows, nb * fmt.type_size)
    if name == "Q6_K":
        e = grid.extra
        u = (c + 32).astype(np.uint32).reshape(rows, nb, 2, 4, 32)  # [half n, g, l]
        low = u & 0xF
        ql = np.concatenate([_nibbles(low[:, :, :, 0], low[:, :, :, 2]),
                             _nibbles(low[:, :, :, 1], low[:, :, :, 3])], axis=3)  # [.., n, 64]
        high = (u >> 4) & 3
        qh = (high[:, :, :, 0] | (high[:, :, :, 1] << 2) | (high[:, :, :, 2] << 4)
              | (high[:, :, :, 3] << 6)).astype(np.uint8)  # [.., n, 32]
        parts = [ql.reshape(rows, nb, 128), qh.reshape(rows, nb, 64),
                 e["sc"].reshape(rows, nb, 16).astype(np.int8).view(np.uint8),
                 _f16_bytes(e["d"].reshape(rows, nb, 1))]
        return np.concatenate(parts, axis=2).reshape(rows, nb * fmt.type_size)
    if name in ("G3E_I8_ROW", "G3E_SFP8"):
        d = _f16_bytes(grid.scale.reshape(rows, nb, 1))
        body = c.astype(np.int8).view(np.uint8) if name == "G3E_I8_ROW" else c.astype(np.uint8)
        return np.concatenate([d, body], axis=2).reshape(rows, nb * fmt.type_size)
    if name == "G3E_I4_ROW":
        d = _f16_bytes(grid.scale.reshape(rows, nb, 1))
        u = (c + 8).astype(np.uint32).reshape(rows, nb, 64, 2)
        body = _nibbles(u[:, :, :, 0], u[:, :, :, 1])
        return np.concatenate([d, body], axis=2).reshape(rows, nb * fmt.type_size)
    raise ValueError(f"no packer for format {name}")


# Dequantization --------------------------------------------------------------------------------

def dequantize(fmt: Format, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """float32 [rows, cols] from a tensor's bytes, as the runtime dequantizes them."""
    import gguf

    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1)
    if fmt.standard:
        qtype = gguf.GGMLQuantizationType(fmt.type_id)
        return gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
    nb = cols // fmt.block_size
    blocks = raw.reshape(rows, nb, fmt.type_size)
    d = blocks[:, :, 0:2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    body = blocks[:, :, 2:]
    if fmt.name == "G3E_I8_ROW":
        codes = body.view(np.int8).astype(np.float32)
        return (d * codes).astype(np.float32).reshape(rows, cols)
    if fmt.name == "G3E_I4_ROW":
        codes = np.stack([body & 0xF, body >> 4], axis=-1).reshape(rows, nb, fmt.block_size)
        return (d * (codes.astype(np.float32) - 8)).astype(np.float32).reshape(rows, cols)
    if fmt.name == "G3E_SFP8":
        return (d * sfp8_decode(body)).astype(np.float32).reshape(rows, cols)
    raise ValueError(f"no dequantization for format {fmt.name}")


def row_bytes(fmt: Format, cols: int) -> int:
    if cols % fmt.block_size:
        raise ValueError(f"a row of {cols} elements is not a multiple of the {fmt.name} block size {fmt.block_size}")
    return cols // fmt.block_size * fmt.type_size
