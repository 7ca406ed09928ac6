"""Encode one tensor in one format: grid detection, then scale search and rounding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formats import Format, dequantize, grid_values, pack
from .grid import detect_grid
from .rounding import round_gptq, round_nearest
from .scales import fit_grid


@dataclass
class Encoded:
    fmt: Format
    raw: np.ndarray              # uint8 bytes of the tensor
    method: str                  # "copy", "grid", "exact", "rounded", "gptq"
    rel_error: float = 0.0       # ||W - Q|| / ||W|| (Frobenius)
    output_error: float = 0.0    # trace(dW H dW^T) / trace(W H W^T), with calibration
    abs_output_error: float = 0.0  # trace(dW H dW^T) / tokens: mean squared output error


def output_error(delta: np.ndarray, hessian: np.ndarray) -> float:
    """trace(delta H delta^T) for delta [rows, cols], H [cols, cols], in float64."""
    d = delta.astype(np.float64)
    return float(np.einsum("ij,ij->", d @ hessian, d))


def encode_tensor(weights: np.ndarray, fmt: Format, *, grid: bool = True, search: bool = True,
                  importance: np.ndarray | None = None, hessian: np.ndarray | None = None,
                  n_tokens: int = 1) -> Encoded:
    """Encode weights [rows, cols] (or [n]) in fmt; fmt's block must divide the row length."""
    w2 = weights.reshape(-1, weights.shape[-1]) if weights.ndim > 1 else weights.reshape(1, -1)
    if fmt.kind == "float":
        raw = pack(fmt, None, None, values=w2)
        values = dequantize(fmt, raw, *w2.shape) if fmt.name != "F32" else w2
        return _with_errors(Encoded(fmt, raw.reshape(-1), "exact" if np.array_equal(values, w2) else "rounded"),
                            w2, values, hessian, n_tokens)
    if grid:
        found = detect_grid(fmt, w2)
        if found is not None:
            codes, g = found
            return Encoded(fmt, pack(fmt, codes, g).reshape(-1), "grid")
    g = fit_grid(fmt, w2, importance, search=search)
    if hessian is not None:
        refit = None
        if fmt.kind in ("block", "kquant", "sfp8"):
            def refit(values: np.ndarray, first: int) -> None:
                part = fit_grid(fmt, values, None if importance is None else importance[first:first + fmt.block_size],
                                search=search)
                _replace_block(g, part, first)
        codes = round_gptq(w2, g, hessian, refit=refit)
        method = "gptq"
    else:
        codes = round_nearest(w2, g)
        method = "rounded"
    scale, offset = g.expand()
    values = grid_values(codes, scale, offset, fmt)
    return _with_errors(Encoded(fmt, pack(fmt, codes, g).reshape(-1), method), w2, values, hessian, n_tokens)


def _replace_block(grid, part, first: int) -> None:
    """Copy the grid `part` of one block of columns into `grid` at column `first`."""
    fmt = grid.fmt
    groups = slice(first // fmt.group_size, (first + fmt.block_size) // fmt.group_size)
    grid.scale[:, groups] = part.scale
    grid.offset[:, groups] = part.offset
    rows = grid.scale.shape[0]
    n_blocks = grid.scale.shape[1] * fmt.group_size // fmt.block_size
    block = first // fmt.block_size
    for key, values in part.extra.items():
        target = grid.extra[key].reshape(rows, n_blocks, *grid.extra[key].shape[1:])
        target[:, block] = values.reshape(rows, *values.shape[1:])


def _with_errors(enc: Encoded, w: np.ndarray, values: np.ndarray, hessian, n_tokens: int) -> Encoded:
    delta = values.astype(np.float64) - w.astype(np.float64)
    norm = float(np.sqrt((w.astype(np.float64) ** 2).sum()))
    enc.rel_error = float(np.sqrt((delta ** 2).sum())) / norm if norm > 0 else 0.0
    if hessian is not None and enc.rel_error > 0:
        err = output_error(delta, hessian)
        base = output_error(w, hessian)
        enc.output_error = err / base if base > 0 else 0.0
        enc.abs_output_error = err / max(n_tokens, 1)
    return enc
