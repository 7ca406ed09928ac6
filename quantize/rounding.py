"""Rounding onto a fitted grid: nearest code, or GPTQ-style error feedback with calibration.

With a layer input second-moment matrix H = sum over tokens of x x^T, the output error of a
weight error E is trace(E H E^T). GPTQ (Frantar et al., 2022) rounds the columns one at a time
and spreads each column's rounding error over the columns not yet rounded, through the inverse
of H. That lowers the output error far below nearest rounding. The grid comes from the caller,
so any format can use it.
"""

from __future__ import annotations

import numpy as np

from .formats import Format, Grid, grid_values, round_to_grid

# Diagonal damping as a fraction of the mean diagonal of H, the value the GPTQ paper uses. It
# keeps the Cholesky factorisation stable when some input channels are (nearly) never active.
DEFAULT_DAMPING = 0.01
_COLUMN_BLOCK = 128


def round_nearest(weights: np.ndarray, grid: Grid) -> np.ndarray:
    scale, offset = grid.expand()
    return round_to_grid(weights.astype(np.float32), scale, offset, grid.fmt)


def round_gptq(weights: np.ndarray, grid: Grid, hessian: np.ndarray, damping: float = DEFAULT_DAMPING,
               refit=None) -> np.ndarray:
    """Codes [rows, cols] for weights [rows, cols] given H [cols, cols] (float64).

    refit(values [rows, block_size], first_column) refits the grid of one block of columns in
    place. It is called when rounding reaches the block, on the weights as updated by the
    error feedback so far, as GPTQ fits each group's scale.
    """
    fmt: Format = grid.fmt
    rows, cols = weights.shape
    w = weights.astype(np.float64).copy()
    h = np.array(hessian, dtype=np.float64, copy=True)
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(cols)] += damping * max(float(np.mean(np.diag(h))), 1e-12)
    try:
        lower = np.linalg.cholesky(h)
        inverse = np.linalg.inv(lower)
        h_inv = inverse.T @ inverse
        upper = np.linalg.cholesky(h_inv).T
    except np.linalg.LinAlgError:
        return round_nearest(weights, grid)

    codes = np.zeros((rows, cols), dtype=np.int32 if fmt.kind != "sfp8" else np.uint8)
    for start in range(0, cols, _COLUMN_BLOCK):
        stop = min(start + _COLUMN_BLOCK, cols)
        block = w[:, start:stop].copy()
        errors = np.zeros_like(block)
        u = upper[start:stop, start:stop]
        scale, offset = grid.expand(slice(start, stop))
        for i in range(stop - start):
            column_index = start + i
            if refit is not None and column_index % fmt.block_size == 0:
                end = column_index + fmt.block_size
                ahead = w[:, column_index:end].copy()
                inside = min(end, stop) - column_index
                ahead[:, :inside] = block[:, i:i + inside]
                refit(ahead.astype(np.float32), column_index)
                scale, offset = grid.expand(slice(start, stop))
            column = block[:, i]
            code = round_to_grid(column.astype(np.float32), scale[:, i], offset[:, i], fmt)
            value = grid_values(code, scale[:, i], offset[:, i], fmt).astype(np.float64)
            codes[:, start + i] = code
            err = (column - value) / u[i, i]
            block[:, i + 1:] -= np.outer(err, u[i, i + 1:])
            errors[:, i] = err
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return codes
