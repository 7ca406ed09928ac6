"""Float32 vector kernels of every instruction set compiled in and supported by this CPU,
against numpy and the scalar reference."""

from __future__ import annotations

import numpy as np
import pytest

from gemma3_edge import _core

vec = _core.vec


def available_isas() -> list[str]:
    isas = ["scalar"]
    active = _core.active_isa()
    # A CPU that runs AVX-512 also runs AVX2; the active ISA bounds what this CPU supports.
    if active.startswith("avx512"):
        isas += ["avx2", "avx512"]
    elif active.startswith("avx2"):
        isas += ["avx2"]
    elif active.startswith("neon"):
        isas += ["neon"]
    return isas


ISAS = available_isas()
# Lengths around the SIMD widths (8, 16, 32) and head sizes used by Gemma 3 (256).
LENGTHS = [1, 3, 7, 8, 15, 16, 17, 31, 33, 256, 641, 2048]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("isa", ISAS)
def test_dot_and_axpy(isa, rng):
    for n in LENGTHS:
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        expected = float(np.dot(a.astype(np.float64), b.astype(np.float64)))
        # float32 accumulation in a different order: error grows like sqrt(n) * eps * sum|a*b|.
        bound = 8 * np.sqrt(n) * np.finfo(np.float32).eps * float(np.abs(a * b).sum()) + 1e-30
        assert abs(vec.dot(isa, a, b) - expected) <= bound, f"n={n}"
        y = rng.standard_normal(n).astype(np.float32)
        np.testing.assert_allclose(vec.axpy(isa, 0.75, a, y), y + np.float32(0.75) * a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_softmax(isa, rng):
    for n in LENGTHS:
        x = (rng.standard_normal(n) * 10).astype(np.float32)
        x64 = x.astype(np.float64)
        expected = np.exp(x64 - x64.max())
        expected /= expected.sum()
        # The vector exp is accurate to a few float32 ulps (relative 2e-7 per element).
        np.testing.assert_allclose(vec.softmax(isa, x), expected, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("isa", ISAS)
def test_softmax_extreme_values(isa):
    x = np.array([-1e30, 0.0, 88.0, -88.0, 1e-30] + [-200.0] * 20, dtype=np.float32)
    out = vec.softmax(isa, x)
    assert np.isfinite(out).all()
    assert abs(float(out.sum()) - 1.0) < 1e-6
    assert out.argmax() == 2


@pytest.mark.parametrize("isa", ISAS)
def test_rms_norm(isa, rng):
    for n in LENGTHS:
        x = rng.standard_normal(n).astype(np.float32)
        w = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
        x64 = x.astype(np.float64)
        expected = x64 / np.sqrt((x64 * x64).mean() + 1e-6) * w
        np.testing.assert_allclose(vec.rms_norm(isa, x, w, 1e-6), expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_gelu_tanh_mul(isa, rng):
    for n in LENGTHS:
        gate = (rng.standard_normal(n) * 4).astype(np.float32)
        up = rng.standard_normal(n).astype(np.float32)
        g = gate.astype(np.float64)
        expected = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * up
        # tanh is computed as 1 - 2 / (1 + exp(2u)): absolute error ~1e-7 around 0.
        np.testing.assert_allclose(vec.gelu_tanh_mul(isa, gate, up), expected, rtol=1e-5, atol=1e-6)
    extreme = np.array([-100.0, -20.0, 0.0, 20.0, 100.0], dtype=np.float32)
    out = vec.gelu_tanh_mul(isa, extreme, np.ones(5, dtype=np.float32))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 20.0, 100.0], atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 33, 640), (5, 31, 17), (7, 64, 256), (13, 100, 33), (97, 65, 40)])
def test_sgemm(isa, rng, m, n, k):
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    expected = x.astype(np.float64) @ w.astype(np.float64).T
    bound = 8 * np.sqrt(k) * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w).T) + 1e-30
    assert (np.abs(vec.sgemm(isa, w, x) - expected) <= bound).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows,count,n", [(1, 1, 1), (2, 64, 256), (4, 63, 256), (7, 5, 40), (64, 64, 256),
                                          (5, 3, 33), (9, 17, 128)])
def test_attention_rows_equal_dot_and_axpy(isa, rng, rows, count, n):
    # Batch invariance of attention rests on these kernels giving each pair exactly what dot
    # and a sequence of axpy calls give, whatever the number of rows and keys.
    q_storage = rng.standard_normal((rows, n + 8)).astype(np.float32)
    k_storage = rng.standard_normal((count, n + 24)).astype(np.float32)
    q, k = q_storage[:, :n], k_storage[:, 5:5 + n]
    scores = vec.dot_rows(isa, q, k)
    expected = np.array([[vec.dot(isa, np.ascontiguousarray(q[r]), np.ascontiguousarray(k[j])) for j in range(count)]
                         for r in range(rows)], dtype=np.float32)
    np.testing.assert_array_equal(scores, expected)

    p = rng.random((rows, count)).astype(np.float32)
    out = rng.standard_normal((rows, n)).astype(np.float32)
    result = vec.axpy_rows(isa, p, k, out)
    for r in range(rows):
        row = out[r].copy()
        for j in range(count):
            row = vec.axpy(isa, float(p[r, j]), np.ascontiguousarray(k[j]), row)
        np.testing.assert_array_equal(result[r], row)
    bound = 8 * count * np.finfo(np.float32).eps * (np.abs(out) + np.abs(p) @ np.abs(k)) + 1e-30
    assert (np.abs(result - (out.astype(np.float64) + p.astype(np.float64) @ k.astype(np.float64))) <= bound).all()


def test_unknown_isa_rejected():
    with pytest.raises(ValueError, match="not compiled"):
        vec.dot("sse9", np.ones(4, np.float32), np.ones(4, np.float32))
