"""Mixed precision under a size budget: a format per tensor that minimises the estimated loss.

Each attention and feed-forward tensor is encoded in every candidate format that fits its rows
(plus, at zero error, the grid it already lies on). A choice's layer-output error is
e = trace(dW H dW^T) / tokens, with H from calibration. The tensor's sensitivity is measured
once: the KL divergence of the model's next-token distribution when only that tensor is
replaced by its cheapest candidate, divided by that candidate's e. The estimated KL of each
choice is sensitivity * e. A greedy pass over the lower convex hull of each tensor's
(bytes, estimated KL) points spends the budget where it lowers the total most per byte.
"""

from __future__ import annotations

import numpy as np

from .encode import Encoded, encode_tensor
from .formats import FORMATS, pack
from .grid import DETECTION_ORDER, detect_grid
from .schemes import MIXED_LEVELS, MIXED_PROJECT_LEVELS


def _candidates(plan, weights, calibration, options) -> list[Encoded]:
    t = plan.tensor
    w = weights[t.name]
    hessian = calibration.for_tensor(t.name) if calibration is not None else None
    importance = calibration.importance(t.name) if calibration is not None else None
    n_tokens = calibration.n_tokens if calibration is not None else 1
    found: list[Encoded] = []
    if options.grid:
        if t.raw is not None and t.source_type in FORMATS and FORMATS[t.source_type].kind != "float":
            found.append(Encoded(FORMATS[t.source_type], t.raw(), "copy"))
        else:
            for name in DETECTION_ORDER:
                fmt = FORMATS[name]
                if t.shape[-1] % fmt.block_size == 0:
                    grid = detect_grid(fmt, w)
                    if grid is not None:
                        found.append(Encoded(fmt, pack(fmt, *grid).reshape(-1), "grid"))
                        break
    levels = (MIXED_PROJECT_LEVELS if options.mixed_project_formats else ()) + MIXED_LEVELS
    for level in levels:
        fitting = [FORMATS[n] for n in level if t.shape[-1] % FORMATS[n].block_size == 0]
        if not fitting:
            continue
        fmt = fitting[0]
        if found and found[0].fmt.bits_per_weight <= fmt.bits_per_weight:
            continue  # an exact grid at no more bits beats any rounding
        enc = encode_tensor(w, fmt, grid=options.grid, search=options.search, importance=importance,
                            hessian=hessian, n_tokens=n_tokens)
        if hessian is None:
            enc.abs_output_error = float(enc.rel_error ** 2 * (w.astype(np.float64) ** 2).sum())
        found.append(enc)
    return found


def _hull(points: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """Lower convex hull of (bytes, loss, index) points, by increasing bytes and decreasing loss."""
    points = sorted(points)
    kept: list[tuple[int, float, int]] = []
    for p in points:
        if kept and p[1] >= kept[-1][1]:
            continue  # more bytes for no less loss
        while len(kept) >= 2:
            (b1, l1, _), (b2, l2, _) = kept[-2], kept[-1]
            # Drop the middle point when it lies above the line from kept[-2] to p.
            if (l1 - l2) * (p[0] - b1) <= (l1 - p[1]) * (b2 - b1):
                kept.pop()
            else:
                break
        kept.append(p)
    return kept


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def measure_sensitivity(source, weights, calibration, candidates, options, progress) -> dict[str, float]:
    """KL divergence per unit layer-output error for every tensor with a lossy candidate."""
    from .calibrate import Forward, ModelShape
    from .formats import dequantize

    n_tokens = min(options.sensitivity_tokens, len(calibration.chunks[0]))
    n_scored = max(1, n_tokens // 4)
    stream = [h[:n_tokens] for h in calibration.residuals[0]]
    forward = Forward(ModelShape.from_source(source), weights)
    reference = _log_softmax(forward.logits(forward.final_hidden(stream[-1][-n_scored:])))
    p_reference = np.exp(reference)
    sensitivity = {}
    names = [n for n, encs in candidates.items() if encs[0].abs_output_error > 0]
    iterator = progress(names, desc="sensitivity", unit="tensor") if progress else names
    for name in iterator:
        cheapest = candidates[name][0]
        rows, cols = weights[name].shape
        original = weights[name]
        weights[name] = dequantize(cheapest.fmt, cheapest.raw, rows, cols)
        try:
            layer = int(name.split(".")[1])
            h = stream[layer]
            for i in range(layer, forward.shape.n_layers):
                h = forward.layer(i, h)
            perturbed = _log_softmax(forward.logits(forward.final_hidden(h[-n_scored:])))
        finally:
            weights[name] = original
        kl = float((p_reference * (reference - perturbed)).sum(axis=1).mean())
        sensitivity[name] = max(kl, 0.0) / cheapest.abs_output_error
    return sensitivity


def allocate(source, plans, weights, calibration, options, progress):
    """Choose an Encoded per "mixed" plan within options.target_size or options.target_bpw."""
    mixed = [p for p in plans if p.mode == "mixed"]
    iterator = progress(mixed, desc="candidates", unit="tensor") if progress else mixed
    options_by_tensor = {p.tensor.name: _candidates(p, weights, calibration, options) for p in iterator}
    for encs in options_by_tensor.values():
        encs.sort(key=lambda e: len(e.raw))
    if calibration is not None and calibration.residuals:
        sensitivity = measure_sensitivity(source, weights, calibration, options_by_tensor, options, progress)
        typical = float(np.median(list(sensitivity.values()))) if sensitivity else 1.0
        for name, encs in options_by_tensor.items():
            for e in encs:
                e.abs_output_error *= sensitivity.get(name, typical)

    n_mixed = sum(p.tensor.n_elements for p in mixed)
    if options.target_bpw is not None:
        budget = int(options.target_bpw * n_mixed / 8)
    else:
        fixed = _fixed_bytes(source, plans)
        budget = int(options.target_size) - fixed
    hulls = {}
    for name, encs in options_by_tensor.items():
        hulls[name] = _hull([(_padded(len(e.raw)), e.abs_output_error, i) for i, e in enumerate(encs)])
    position = {name: 0 for name in hulls}
    spent = sum(h[0][0] for h in hulls.values())
    if spent > budget:
        raise ValueError(f"the target leaves {budget / 1e6:.2f} MB for the attention and feed-forward tensors, "
                         f"but their smallest formats need {spent / 1e6:.2f} MB; raise the target")
    while True:
        best, best_gain = None, 0.0
        for name, hull in hulls.items():
            i = position[name]
            if i + 1 >= len(hull):
                continue
            extra = hull[i + 1][0] - hull[i][0]
            if spent + extra > budget:
                continue
            gain = (hull[i][1] - hull[i + 1][1]) / max(extra, 1)
            if gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            break
        i = position[best]
        spent += hulls[best][i + 1][0] - hulls[best][i][0]
        position[best] = i + 1
    chosen = {name: options_by_tensor[name][hulls[name][position[name]][2]] for name in hulls}
    counts: dict[str, int] = {}
    for enc in chosen.values():
        counts[enc.fmt.name] = counts.get(enc.fmt.name, 0) + 1
    notes = [f"mixed precision: {spent / 1e6:.2f} MB of {budget / 1e6:.2f} MB for attention and feed-forward; "
             + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))]
    return chosen, notes


def _fixed_bytes(source, plans) -> int:
    """Bytes of everything but the mixed tensors: header, metadata, other tensors, padding."""
    from . import gguf_file as gf
    from .convert import _metadata
    from .formats import row_bytes

    out = gf.GGUFOutput("unused")
    _metadata(out, source, 0)
    total = 0
    for p in plans:
        shape = p.tensor.shape
        fmt = FORMATS["Q4_0"] if p.mode == "mixed" else p.fmt
        cols = shape[-1]
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        n = 0
        if cols % fmt.block_size == 0:
            n = row_bytes(fmt, cols) * rows
        out.add_tensor(p.tensor.name, shape, fmt.type_id, n)
        if p.mode != "mixed":
            total += _padded(n)
    return total + len(out._header())


def _padded(n_bytes: int) -> int:
    """Bytes a tensor takes in the file, with the padding to the GGUF alignment."""
    from .gguf_file import ALIGNMENT

    return n_bytes + (-n_bytes % ALIGNMENT)
