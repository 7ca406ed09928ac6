"""Grid detection: recognise weights that already lie on a format's grid and recover its codes.

Gemma 3 QAT checkpoints and dequantized GGUF files store values of the form scale * code
(+ offset). Quantizing them again would round a second time; recovering the exact grid instead
re-encodes them with no loss. Detection works on exact integers: every float32 of a block is an
integer multiple of the smallest unit in last place u among its values, so the greatest common
divisor of the (differences of the) integers gives the block's step. Each candidate grid is
verified by evaluating the format's dequantization formula in float32 and comparing values.
"""

from __future__ import annotations

import numpy as np

from .formats import Format, Grid, grid_values
from .scales import to_f16

# Tried in this order; the first format whose grid reproduces every value is used.
DETECTION_ORDER = ("Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")
_MAX_DIVISOR = 8  # multiples of the gcd step tried when the gcd is a multiple of the true step
_SAMPLE_ROWS = 16


def _units(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers n [B, k] and units u [B] with blocks == n * u exactly, per block row."""
    x = blocks.astype(np.float64)
    _, exponent = np.frexp(x)
    # ulp of a float32 with frexp exponent e is 2^(e - 24); zeros do not constrain u.
    ulp_exp = np.where(x != 0, exponent - 24, np.iinfo(np.int32).max)
    e_min = ulp_exp.min(axis=1)
    e_min = np.where(e_min == np.iinfo(np.int32).max, 0, e_min)
    u = np.ldexp(1.0, e_min)
    n = x / u[:, None]
    too_wide = np.abs(n).max(axis=1) >= 2.0 ** 52
    n = np.where(too_wide[:, None], 0, n)
    return n.astype(np.int64), np.where(too_wide, np.nan, u)


def _is_f16(values: np.ndarray) -> np.ndarray:
    return to_f16(values) == values.astype(np.float32)


def _detect_symmetric(fmt: Format, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Scales [G] and codes [G, n] for groups x [G, n] on a symmetric f16-scaled grid."""
    scale = np.zeros(x.shape[0], dtype=np.float32)
    codes = np.zeros(x.shape, dtype=np.int32)
    solved = ~x.any(axis=1)  # all-zero groups: scale 0
    # Fast path: the extreme value has the largest code magnitude, as every reference
    # quantizer (amax / qmax, or max / qmin) produces.
    m = np.abs(x).max(axis=1)
    for k in dict.fromkeys(k for k in (-fmt.qmin, fmt.qmax) if k > 0):
        todo = np.flatnonzero(~solved)
        if not len(todo):
            break
        for sign in (1.0, -1.0):
            d = (sign * m[todo] / np.float32(k)).astype(np.float32)
            safe = np.where(d == 0, 1, d)[:, None]
            q = np.rint(x[todo] / safe)
            ok = _is_f16(d) & (q.min(axis=1) >= fmt.qmin) & (q.max(axis=1) <= fmt.qmax)
            ok &= ((d[:, None] * q.astype(np.float32)).astype(np.float32) == x[todo]).all(axis=1)
            ok &= ~solved[todo]
            scale[todo[ok]] = d[ok]
            codes[todo[ok]] = q[ok].astype(np.int32)
            solved[todo[ok]] = True
    rest = np.flatnonzero(~solved)
    if not len(rest):
        return scale, codes

    # Slow path: the gcd of the block's integers is its step (or a multiple of it).
    n, u = _units(x[rest])
    g = np.gcd.reduce(np.abs(n), axis=1)
    done = np.zeros(len(rest), dtype=bool)
    for divisor in range(1, _MAX_DIVISOR + 1):
        todo = ~done & (g % divisor == 0) & (g > 0) & np.isfinite(u)
        if not todo.any():
            continue
        step = (g[todo] // divisor).astype(np.float64) * u[todo]
        q = n[todo] // (g[todo] // divisor)[:, None]
        for sign in (1, -1):
            d = (sign * step).astype(np.float32)
            qs = q * sign
            ok = _is_f16(d) & (d.astype(np.float64) == sign * step)
            ok &= (qs.min(axis=1) >= fmt.qmin) & (qs.max(axis=1) <= fmt.qmax)
            index = np.flatnonzero(todo)[ok]
            fresh = ~done[index]
            scale[rest[index[fresh]]] = d[ok][fresh]
            codes[rest[index[fresh]]] = qs[ok][fresh]
            done[index[fresh]] = True
    if not done.all():
        return None
    return scale, codes


def _detect_affine_block(fmt: Format, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Q4_1 / Q5_1: value = fl(d * q) + m with f16 d and m; the minimum has code 0."""
    lo = x.min(axis=1)
    if not _is_f16(lo).all():
        return None
    shifted = (x.astype(np.float64) - lo[:, None].astype(np.float64)).astype(np.float32)
    result = _detect_symmetric(Format("_", 0, fmt.block_size, 0, fmt.group_size, 0, fmt.qmax), shifted)
    if result is None:
        return None
    scale, codes = result
    return scale, lo.astype(np.float32), codes


def _reduce_integers(k: np.ndarray, limit: int) -> np.ndarray:
    """Divide each entry above limit by its smallest divisor that brings it to limit or below."""
    k = k.copy()
    for index in zip(*np.nonzero(np.abs(k) > limit)):
        value = int(abs(k[index]))
        for f in range(2, value + 1):
            if value % f == 0 and value // f <= limit:
                k[index] = np.sign(k[index]) * (value // f)
                break
    return k


def _kquant_parameters(values: np.ndarray, levels: int, signed: bool, reducible: bool = False):
    """Factor per-sub-block values [B, k] (exact float32) as f16 d [B] times integers [B, k].

    reducible: the values are grid steps, and a step found as a multiple of the true one (all
    codes of that sub-block share a factor) may be replaced by any integer fraction of it.
    """
    n, u = _units(values)
    g = np.gcd.reduce(np.abs(n), axis=1)
    d = np.zeros(values.shape[0], dtype=np.float32)
    ints = np.zeros(values.shape, dtype=np.int64)
    solved = g == 0
    low = -levels - 1 if signed else 0
    # Every valid divisor reproduces the values. The largest one gives the largest sub-block
    # integers, which is what llama.cpp's quantizers store (the largest scale maps to 63 or
    # -128), so its blocks come back byte for byte.
    exact = np.zeros_like(solved)
    for divisor in range(1, levels + 2):
        todo = (g % divisor == 0) & (g > 0) & np.isfinite(u)
        if not todo.any():
            continue
        step = (g[todo] // divisor).astype(np.float64) * u[todo]
        k = n[todo] // (g[todo] // divisor)[:, None]
        candidate = step.astype(np.float32)
        ok = _is_f16(candidate) & (candidate.astype(np.float64) == step)
        ok &= (k.min(axis=1) >= low) & (k.max(axis=1) <= levels)
        index = np.flatnonzero(todo)[ok]
        d[index] = candidate[ok]
        ints[index] = k[ok]
        exact[index] = True
    solved |= exact
    if reducible:
        # A step found as a multiple of the true one: divide the integers above the limit.
        for divisor in range(1, levels + 2):
            todo = ~solved & (g % divisor == 0) & np.isfinite(u)
            if not todo.any():
                break
            step = (g[todo] // divisor).astype(np.float64) * u[todo]
            k = _reduce_integers(n[todo] // (g[todo] // divisor)[:, None], levels)
            candidate = step.astype(np.float32)
            ok = _is_f16(candidate) & (candidate.astype(np.float64) == step)
            ok &= (k.min(axis=1) >= low) & (k.max(axis=1) <= levels)
            index = np.flatnonzero(todo)[ok]
            d[index] = candidate[ok]
            ints[index] = k[ok]
            solved[index] = True
    return d, ints, solved


def _repair_kquant_mins(x: np.ndarray, scale: np.ndarray, nmax: int):
    """f16 dmin and 6-bit mins [k] for one super-block's sub-blocks x [k, g], or None.

    dmin candidates come from the gcd of the sub-block minima leaving one sub-block out (the
    one whose smallest value has a code above 0), then from each minimum divided by 63 .. 1;
    each sub-block then searches its 64 mins.
    """
    k = x.shape[0]
    minima = (-x.min(axis=1)).astype(np.float32)
    candidates = []
    for left_out in range(k):
        others = np.delete(minima, left_out)[None, :]
        n, u = _units(others)
        g = int(np.gcd.reduce(np.abs(n), axis=1)[0])
        if g == 0 or not np.isfinite(u[0]):
            continue
        for divisor in range(1, 64):
            if g % divisor == 0:
                candidates.append(np.float32((g // divisor) * u[0]))
    # When several sub-blocks have their minimum above code 0: any sub-block minimum with
    # code 0 is dmin times its 6-bit min, and the largest is usually stored as 63.
    for m in range(63, 0, -1):
        candidates.extend((minima[minima > 0] / np.float32(m)).astype(np.float32).tolist())
    m_all = np.arange(64, dtype=np.float32)
    for dmin in dict.fromkeys(candidates):
        dmin = np.float32(dmin)
        if to_f16(dmin) != dmin:
            continue
        offsets = -(dmin * m_all).astype(np.float32)  # [64]
        chosen = np.zeros(k, dtype=np.int32)
        for j in range(k):
            safe = scale[j] if scale[j] != 0 else np.float32(1)
            codes = np.rint((x[j][None, :].astype(np.float64) - offsets[:, None]) / safe)
            inside = (codes.min(axis=1) >= 0) & (codes.max(axis=1) <= nmax)
            values = ((scale[j] * np.clip(codes, 0, nmax).astype(np.float32)).astype(np.float32)
                      + offsets[:, None]).astype(np.float32)
            exact = inside & (values == x[j][None, :]).all(axis=1)
            if not exact.any():
                break
            chosen[j] = int(np.argmax(exact))
        else:
            return dmin, chosen
    return None


def _detect_kquant(fmt: Format, x: np.ndarray):
    """Q4_K / Q5_K / Q6_K grids for super-blocks x [B, 256]."""
    g = fmt.group_size
    per_super = fmt.block_size // g
    sub = x.reshape(-1, g)
    if fmt.affine:
        # The smallest value of a sub-block usually has code 0, so its negation is the
        # sub-block's min. A search repairs the super-blocks where that fails.
        lo = sub.min(axis=1)
        shifted = (sub.astype(np.float64) - lo[:, None].astype(np.float64)).astype(np.float32)
        n, u = _units(shifted)
        step_units = np.gcd.reduce(n, axis=1)
        steps = np.where(step_units > 0, step_units * u, 0).astype(np.float32)
        d, sc, ok_d = _kquant_parameters(steps.reshape(-1, per_super), 63, signed=False, reducible=True)
        if not ok_d.all():
            return None
        scale = (d[:, None] * sc.astype(np.float32)).astype(np.float32).reshape(-1)
        dmin, mq, ok_m = _kquant_parameters((-lo).astype(np.float32).reshape(-1, per_super), 63, signed=False)
        for b in np.flatnonzero(~ok_m):
            # Some sub-block's smallest value has a code above 0; search its 6-bit min.
            rows = slice(b * per_super, (b + 1) * per_super)
            repaired = _repair_kquant_mins(sub[rows], scale[rows], fmt.qmax)
            if repaired is None:
                return None
            dmin[b], mq[b] = repaired
        offset = -(dmin[:, None] * mq.astype(np.float32)).astype(np.float32).reshape(-1)
        safe = np.where(scale == 0, 1, scale)
        codes = np.rint((sub.astype(np.float64) - offset[:, None]) / safe[:, None])
        if codes.min() < fmt.qmin or codes.max() > fmt.qmax:
            return None
        extra = {"d": d, "dmin": dmin, "sc": sc, "m": mq}
        return scale, offset, codes.astype(np.int32), extra

    n, u = _units(sub)
    step_units = np.gcd.reduce(np.abs(n), axis=1)
    steps = np.where(step_units > 0, step_units * u, 0).astype(np.float32)
    # Step magnitudes: the int8 sub-block scale reaches 128 only as -128.
    d, magnitude, ok_d = _kquant_parameters(steps.reshape(-1, per_super), 128, signed=False, reducible=True)
    if not ok_d.all():
        return None
    magnitude = magnitude.reshape(-1)
    step = (np.repeat(d, per_super) * magnitude.astype(np.float32)).astype(np.float32)
    safe = np.where(step == 0, 1, step)
    codes = np.rint(sub.astype(np.float64) / safe[:, None])
    # The signed product d * sc carries the sign of the step. With d > 0, sc = +k needs
    # k <= 127 and codes in range, sc = -k needs the negated codes in range; with d < 0 the
    # roles swap. The sign of d is chosen per super-block so that every sub-block fits.
    fits = (codes.min(axis=1) >= fmt.qmin) & (codes.max(axis=1) <= fmt.qmax)
    fits_negated = (-codes.max(axis=1) >= fmt.qmin) & (-codes.min(axis=1) <= fmt.qmax)
    small = magnitude <= 127
    # Per sub-block: sc sign = +1 keeps codes when d > 0; with d < 0, sc = -k keeps them.
    ok_d_positive = (small & fits) | fits_negated
    ok_d_negative = fits | (small & fits_negated)
    use_negative = ~ok_d_positive.reshape(-1, per_super).all(axis=1)
    if not np.where(use_negative, ok_d_negative.reshape(-1, per_super).all(axis=1), True).all():
        return None
    d_sign = np.where(use_negative, -1, 1)
    negative = np.repeat(use_negative, per_super)
    keep_codes = np.where(negative, fits, small & fits)
    sc = np.where(keep_codes, 1, -1) * np.repeat(d_sign, per_super) * magnitude
    codes = codes * np.where(keep_codes, 1, -1)[:, None]
    d = (d * d_sign).astype(np.float32)
    scale = (np.repeat(d, per_super) * sc.astype(np.float32)).astype(np.float32)
    if sc.min() < -128 or sc.max() > 127:
        return None
    extra = {"d": d, "sc": sc.astype(np.int32).reshape(-1, per_super)}
    return scale, np.zeros_like(scale), codes.astype(np.int32), extra


def detect_grid(fmt: Format, weights: np.ndarray) -> tuple[np.ndarray, Grid] | None:
    """Codes and grid of `fmt` that reproduce weights [rows, cols] exactly, or None."""
    rows, cols = weights.shape
    if fmt.kind not in ("block", "kquant", "row") or cols % fmt.block_size:
        return None
    x = np.ascontiguousarray(weights, dtype=np.float32)
    if not np.isfinite(x).all():
        return None
    # A cheap rejection on a few rows before the whole tensor.
    if rows > _SAMPLE_ROWS and _detect(fmt, x[:_SAMPLE_ROWS]) is None:
        return None
    return _detect(fmt, x)


def _detect(fmt: Format, x: np.ndarray) -> tuple[np.ndarray, Grid] | None:
    rows, cols = x.shape
    g = fmt.group_size
    extra: dict = {}
    if fmt.kind == "row":
        result = _detect_symmetric(fmt, x)
        if result is None:
            return None
        d, codes = result
        scale = np.repeat(d[:, None], cols // g, axis=1)
        offset = np.zeros_like(scale)
    elif fmt.kind == "block" and fmt.affine:
        result = _detect_affine_block(fmt, x.reshape(-1, g))
        if result is None:
            return None
        scale, offset, codes = result
    elif fmt.kind == "block":
        result = _detect_symmetric(fmt, x.reshape(-1, g))
        if result is None:
            return None
        scale, codes = result
        offset = np.zeros_like(scale)
    else:
        result = _detect_kquant(fmt, x.reshape(-1, fmt.block_size))
        if result is None:
            return None
        scale, offset, codes, extra = result
    grid = Grid(fmt, scale.reshape(rows, cols // g), offset.reshape(rows, cols // g), extra)
    codes = codes.reshape(rows, cols)
    sc, off = grid.expand()
    if not np.array_equal(grid_values(codes, sc, off, fmt), x):
        return None
    return codes, grid


def find_grid(weights: np.ndarray, candidates=DETECTION_ORDER, max_bits: float | None = None):
    """Return codes and grid of the first format in candidates (within max_bits per weight)
    whose grid reproduces the weights exactly, or None."""
    from .formats import FORMATS

    for name in candidates:
        fmt = FORMATS[name]
        if max_bits is not None and fmt.bits_per_weight > max_bits + 1e-9:
            continue
        found = detect_grid(fmt, weights)
        if found is not None:
            return found
    return None
