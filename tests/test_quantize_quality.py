"""KL divergence statistics, and files we write loaded by llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gemma3_edge.quantize import ConvertOptions, convert
from gemma3_edge.quantize.quality import chunk_statistics

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_tiny_hf_checkpoint", REPO / "scripts" / "make_tiny_hf_checkpoint.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def test_chunk_statistics_against_definition():
    rng = np.random.default_rng(0)
    p_logits = rng.standard_normal((5, 50)) * 3
    q_logits = p_logits + rng.standard_normal((5, 50)) * 0.3
    targets = rng.integers(0, 50, size=5)
    stats = chunk_statistics(p_logits.astype(np.float32), q_logits.astype(np.float32), targets)
    p = np.exp(p_logits) / np.exp(p_logits).sum(axis=1, keepdims=True)
    q = np.exp(q_logits) / np.exp(q_logits).sum(axis=1, keepdims=True)
    expected = (p * np.log(p / q)).sum(axis=1)
    np.testing.assert_allclose(stats["kl"], expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(stats["same_top1"], p.argmax(1) == q.argmax(1))
    np.testing.assert_allclose(stats["nll_candidate"], -np.log(q[np.arange(5), targets]), rtol=1e-6)


def test_identical_logits_have_zero_divergence():
    logits = np.random.default_rng(1).standard_normal((4, 30)).astype(np.float32)
    stats = chunk_statistics(logits, logits, np.zeros(4, dtype=int))
    assert np.all(stats["kl"] == 0)
    assert stats["same_top1"].all()


@pytest.mark.parametrize("preset", ["q4_0", "q8_0"])
def test_llama_cpp_loads_our_files(tmp_path, preset):
    # llama.cpp must load the Q4_0 and Q8_0 files we write and pick the same top-1 tokens as
    # our runtime where our runtime's top-1 is clear (margin above 0.1 logits, as both round
    # activations differently).
    llama_cpp = pytest.importorskip("llama_cpp")
    import gemma3_edge

    checkpoint = tiny.write_checkpoint(tmp_path / "wide", "wide")
    out = tmp_path / f"wide-{preset}.gguf"
    convert(checkpoint, out, ConvertOptions(preset=preset, progress=False, calibration_chunks=2))
    with np.load(REPO / "tests" / "golden" / "quantize_tiny" / "wide.npz") as data:
        ids = data["ids"].tolist()
    ours = gemma3_edge.Model(out, n_ctx=256, n_threads=2).logits(ids)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)
    assert theirs.shape == ours.shape
    top2 = np.sort(ours, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.1
    assert clear.sum() >= len(ids) // 2
    assert np.array_equal(ours.argmax(axis=1)[clear], theirs.argmax(axis=1)[clear])
