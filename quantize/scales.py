"""Grid fitting: choose each group's scale (and offset) to minimise the weighted squared error.

Taking the absolute maximum as the range wastes levels on outliers; searching the clipping range
and refitting the scale by least squares for the chosen codes lowers the error of every format.
Weights are per-element importances: 1 without calibration, the mean squared activation of the
input channel with it (the diagonal of the layer's input second-moment matrix).
"""

from __future__ import annotations

import numpy as np

from .formats import Format, Grid

# Range factors tried per group: the extreme value is mapped to the end of the code range times
# each factor (< 1 clips the extreme, > 1 leaves headroom). 0.70 .. 1.10 covers the optimum of
# Gaussian-like and heavy-tailed blocks at 4 bits; 8-bit blocks rarely move off 1.
_SYMMETRIC_FACTORS = np.linspace(0.70, 1.10, 17)
_AFFINE_DELTAS = np.linspace(-1.0, 1.0, 11)


def to_f16(values: np.ndarray) -> np.ndarray:
    """Round to the nearest float16 and return it as float32 (the value the file stores)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32).astype(np.float16).astype(np.float32)


def _identity(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _weighted_error(x, w, values):
    diff = x - values
    return (w * diff * diff).sum(axis=-1)


def fit_symmetric(x: np.ndarray, w: np.ndarray, qmin: int, qmax: int, store=to_f16,
                  search: bool = True) -> np.ndarray:
    """Scales d [G] for groups x [G, n] with codes clip(rint(x / d), qmin, qmax).

    The signed extreme m of each group maps to qmin (d = m / qmin, the wider side of an
    asymmetric code range) or, as a candidate too, to qmax. With search=False only m / qmin is
    used, as llama.cpp's reference Q4_0 / Q8_0 quantizers do (for Q8_0 they use amax / 127).
    """
    x = x.astype(np.float32)
    index = np.abs(x).argmax(axis=1)
    m = x[np.arange(x.shape[0]), index]
    if not search:
        divisor = float(qmax) if -qmin == qmax + 1 and qmax >= 127 else float(qmin)
        return store(m / divisor)
    best_d = store(m / qmin)
    best_err = np.full(x.shape[0], np.inf)
    candidates = [qmin * f for f in _SYMMETRIC_FACTORS] + [qmax * f for f in _SYMMETRIC_FACTORS[-6:]]
    for divisor in candidates:
        d = store(m / divisor)
        for refine in (False, True):
            safe = np.where(d == 0, 1, d)[:, None]
            q = np.clip(np.rint(x / safe), qmin, qmax)
            if refine:
                num = (w * x * q).sum(axis=1)
                den = (w * q * q).sum(axis=1)
                d = store(np.where(den > 0, num / np.where(den > 0, den, 1), d))
                safe = np.where(d == 0, 1, d)[:, None]
                q = np.clip(np.rint(x / safe), qmin, qmax)
            err = _weighted_error(x, w, (d[:, None] * q).astype(np.float32))
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_d = np.where(better, d, best_d)
    return best_d.astype(np.float32)


def fit_affine(x: np.ndarray, w: np.ndarray, nmax: int, store_scale=to_f16, store_offset=to_f16,
               nonpositive_offset: bool = False, search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Scales s [G] and offsets o [G] for codes clip(rint((x - o) / s), 0, nmax).

    nonpositive_offset keeps o <= 0, as the K-quant formats store the offset as a non-negative
    6-bit multiple of a positive super-block minimum (value = d * q - dmin * m).
    """
    x = x.astype(np.float32)
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    if nonpositive_offset:
        lo = np.minimum(lo, 0)
    span = hi - lo
    if not search:
        s = store_scale(span / nmax)
        return s, store_offset(lo)
    best_s = store_scale(span / nmax)
    best_o = store_offset(lo)
    best_err = np.full(x.shape[0], np.inf)
    for delta in _AFFINE_DELTAS:
        s0 = store_scale(span / (nmax + delta))
        o0 = store_offset(lo)
        for refine in (False, True):
            s, o = s0, o0
            safe = np.where(s == 0, 1, s)[:, None]
            q = np.clip(np.rint((x - o[:, None]) / safe), 0, nmax)
            if refine:
                a = w.sum(axis=1)
                b = (w * q).sum(axis=1)
                c = (w * q * q).sum(axis=1)
                dx = (w * x).sum(axis=1)
                e = (w * x * q).sum(axis=1)
                det = a * c - b * b
                ok = det > 1e-30 * np.maximum(a * c, 1e-30)
                det_safe = np.where(ok, det, 1)
                s_ls = np.where(ok, (a * e - b * dx) / det_safe, s)
                o_ls = np.where(ok, (c * dx - b * e) / det_safe, o)
                if nonpositive_offset:
                    clamp = o_ls > 0
                    o_ls = np.where(clamp, 0, o_ls)
                    s_ls = np.where(clamp & (c > 0), e / np.where(c > 0, c, 1), s_ls)
                valid = s_ls >= 0
                s = store_scale(np.where(valid, s_ls, s))
                o = store_offset(np.where(valid, o_ls, o))
                safe = np.where(s == 0, 1, s)[:, None]
                q = np.clip(np.rint((x - o[:, None]) / safe), 0, nmax)
            values = ((s[:, None] * q).astype(np.float32) + o[:, None]).astype(np.float32)
            err = _weighted_error(x, w, values)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s = np.where(better, s, best_s)
            best_o = np.where(better, o, best_o)
    return best_s.astype(np.float32), best_o.astype(np.float32)


def _kquant_superblock(values: np.ndarray, levels: int, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Quantize per-sub-block values [B, k] to f16 super scale d [B] times integers [B, k]."""
    if signed:
        d = to_f16(np.abs(values).max(axis=1) / levels)
        safe = np.where(d == 0, 1, d)[:, None]
        ints = np.clip(np.rint(values / safe), -levels - 1, levels)
    else:
        d = to_f16(values.max(axis=1) / levels)
        safe = np.where(d == 0, 1, d)[:, None]
        ints = np.clip(np.rint(values / safe), 0, levels)
    return d, ints.astype(np.int32)


def fit_grid(fmt: Format, weights: np.ndarray, importance: np.ndarray | None, search: bool = True) -> Grid:
    """Fit the grid of `fmt` to a tensor [rows, cols] with per-element importance (or None)."""
    rows, cols = weights.shape
    if cols % fmt.block_size:
        raise ValueError(f"a row of {cols} elements is not a multiple of the {fmt.name} block size {fmt.block_size}")
    w_full = np.ones_like(weights, dtype=np.float32) if importance is None else np.broadcast_to(
        importance, weights.shape).astype(np.float32)
    g = fmt.group_size
    if fmt.kind == "row":
        x = weights.astype(np.float32)
        d = fit_symmetric(x, w_full, fmt.qmin, fmt.qmax, search=search)
        nb = cols // g
        scale = np.repeat(d[:, None], nb, axis=1)
        return Grid(fmt, scale, np.zeros_like(scale))
    if fmt.kind == "sfp8":
        x = weights.reshape(-1, g).astype(np.float32)
        w = w_full.reshape(-1, g)
        d = _fit_sfp8(x, w, search)
        scale = d.reshape(rows, cols // g)
        return Grid(fmt, scale, np.zeros_like(scale))

    x = weights.reshape(-1, g).astype(np.float32)
    w = w_full.reshape(-1, g)
    n_groups = cols // g
    if fmt.kind == "block":
        if fmt.affine:
            s, o = fit_affine(x, w, fmt.qmax, search=search)
        else:
            s = fit_symmetric(x, w, fmt.qmin, fmt.qmax, search=search)
            o = np.zeros_like(s)
        return Grid(fmt, s.reshape(rows, n_groups), o.reshape(rows, n_groups))

    # K-quants: sub-block parameters at full precision, then quantized per super-block of 256.
    per_super = fmt.block_size // g
    if fmt.affine:
        s, o = fit_affine(x, w, fmt.qmax, store_scale=_identity, store_offset=_identity,
                          nonpositive_offset=True, search=search)
        d, sc = _kquant_superblock(s.reshape(-1, per_super), 63, signed=False)
        dmin, mq = _kquant_superblock((-o).reshape(-1, per_super), 63, signed=False)
        scale = (d[:, None] * sc.astype(np.float32)).astype(np.float32)
        offset = -(dmin[:, None] * mq.astype(np.float32)).astype(np.float32)
        extra = {"d": d, "dmin": dmin, "sc": sc, "m": mq}
    else:
        s = fit_symmetric(x, w, fmt.qmin, fmt.qmax, store=_identity, search=search)
        d, sc = _kquant_superblock(s.reshape(-1, per_super), 127, signed=True)
        scale = (d[:, None] * sc.astype(np.float32)).astype(np.float32)
        offset = np.zeros_like(scale)
        extra = {"d": d, "sc": sc}
    return Grid(fmt, scale.reshape(rows, n_groups), offset.reshape(rows, n_groups), extra)


def _fit_sfp8(x: np.ndarray, w: np.ndarray, search: bool) -> np.ndarray:
    from .formats import SFP8_MAX, sfp8_decode, sfp8_encode

    amax = np.abs(x).max(axis=1)
    best = to_f16(amax / SFP8_MAX)
    if not search:
        return best
    best_err = np.full(x.shape[0], np.inf)
    result = best.copy()
    # The top of the SFP8 range has a relative step of 1/8, so clipping slightly can pay.
    for factor in (1.0, 0.97, 0.94, 0.91, 1.03):
        d = to_f16(amax / (SFP8_MAX * factor))
        # A scale that rounds below amax / 1.875 would clip more than intended; that is allowed.
        safe = np.where(d == 0, 1, d)[:, None]
        values = (d[:, None] * sfp8_decode(sfp8_encode(x / safe))).astype(np.float32)
        err = _weighted_error(x, w, values)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        result = np.where(better, d, result)
    return result.astype(np.float32)
