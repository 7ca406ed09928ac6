"""KV cache element types, chunked prefill and saved state on the default model."""

from __future__ import annotations

import numpy as np
import pytest

import gemma3_edge

WINDOW = 512  # Gemma 3 270M's sliding window


@pytest.fixture(scope="module")
def long_ids(wikitext, quantized_model):
    return quantized_model.tokenize(wikitext[:40000])[:1600]


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    top = reference.argmax(axis=1)
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    agree = other.argmax(axis=1) == top
    return float(agree.mean()), float(agree[margin >= 0.5].mean())


@pytest.fixture(scope="module")
def greedy_continuation(quantized_model, long_ids):
    """A 1,500-token prompt and 256 tokens the f32-KV model generates greedily after it."""
    prompt = long_ids[:1500]
    quantized_model.generate(prompt, max_tokens=256, temperature=0)
    generated = quantized_model.last_stats.token_ids
    # Without a stop token the run has 256 tokens; a shorter one still has positions to compare.
    assert len(generated) >= 64
    sequence = prompt + generated
    return sequence, quantized_model.logits(sequence, start=len(prompt) - 1)[:-1]


@pytest.mark.parametrize("kv_type", ["f16", "int8"])
def test_reduced_kv_agrees_with_f32(default_model_file, greedy_continuation, kv_type):
    # The bar for a lossy KV cache, teacher-forced over the generated tokens: top-1 equal wherever
    # the f32-KV run leads by >= 0.5 logit, and >= 97% of all positions (near-ties flip under
    # any rounding).
    sequence, reference = greedy_continuation
    model = gemma3_edge.Model(default_model_file, n_ctx=2048, n_threads=2, kv_type=kv_type)
    start = len(sequence) - len(reference) - 1
    overall, confident = agreement(reference, model.logits(sequence, start=start)[:-1])
    assert confident == 1.0, f"{kv_type}: {confident:.4f} agreement where margin >= 0.5"
    assert overall >= 0.97, f"{kv_type}: {overall:.4f} overall agreement"


@pytest.mark.parametrize("kv_type", ["f16", "int8"])
def test_reduced_kv_perplexity(default_model_file, quantized_model, wikitext, kv_type):
    text = wikitext[:60000]
    reference = quantized_model.perplexity(text, n_ctx=512, n_chunks=4)
    model = gemma3_edge.Model(default_model_file, n_ctx=512, n_threads=2, kv_type=kv_type)
    value = model.perplexity(text, n_ctx=512, n_chunks=4)
    assert abs(value / reference - 1) <= 0.01, f"{kv_type}: perplexity {value:.4f} vs f32 KV {reference:.4f}"


def test_kv_size_formula_matches_runtime(default_model_file):
    for n_ctx, kv_type in [(600, "f32"), (2048, "f16"), (4096, "int8")]:
        model = gemma3_edge.Model(default_model_file, n_ctx=n_ctx, n_threads=1, kv_type=kv_type)
        assert model.kv_bytes == model.kv_cache_bytes(n_ctx, kv_type)


def test_kv_memory_by_type(quantized_model):
    f32 = quantized_model.kv_cache_bytes(32768, "f32")
    assert quantized_model.kv_cache_bytes(32768, "f16") * 2 == f32
    # int8 stores 32 values in 32 bytes + a 4-byte scale: 36/128 of f32.
    assert quantized_model.kv_cache_bytes(32768, "int8") * 128 == f32 * 36
    with pytest.raises(ValueError, match="kv_type must be one of"):
        quantized_model.kv_cache_bytes(1024, "int4")


@pytest.mark.parametrize("prompt_length", [WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW + 3])
def test_chunk_size_does_not_change_logits(default_model_file, long_ids, prompt_length):
    ids = long_ids[:prompt_length]
    # A chunking error in any position reaches the later ones through attention, so the last 32
    # rows (which see the whole window) are checked; all rows' logits would cost minutes.
    start = prompt_length - 32
    reference = None
    for n_batch in [1, 7, 64, WINDOW - 1, WINDOW, prompt_length]:
        if n_batch == 1 and prompt_length != WINDOW + 1:
            continue  # one token at a time is slow; the prompt that crosses the window covers it
        model = gemma3_edge.Model(default_model_file, n_ctx=2048, n_batch=n_batch, n_threads=2)
        logits = model.logits(ids, start=start)
        if reference is None:
            reference = logits
            continue
        # Attention and the matrix products sum each row in an order that does not depend on
        # the other rows of the chunk (model.cpp, Context::attention), so chunking changes no bit.
        diff = np.abs(logits - reference).max()
        assert diff == 0.0, f"n_batch {n_batch}: logits differ by up to {diff:.3g}"


@pytest.mark.parametrize("kv_type", ["f16", "int8"])
def test_rounded_kv_batch_invariance(default_model_file, long_ids, kv_type):
    # Past the window, the ring's slots hold other positions' keys next to the visible ones.
    # Those must get exactly zero weight, whatever the chunk.
    ids = long_ids[:WINDOW + 40]
    start = len(ids) - 16
    runs = [(n_batch, n_threads) for n_batch, n_threads in [(512, 2), (7, 2), (1, 2), (64, 1)]]
    reference = None
    for n_batch, n_threads in runs:
        model = gemma3_edge.Model(default_model_file, n_ctx=1024, n_batch=n_batch, n_threads=n_threads,
                                  kv_type=kv_type)
        logits = model.logits(ids, start=start)
        if reference is None:
            reference = logits
            continue
        diff = np.abs(logits - reference).max()
        assert diff == 0.0, f"n_batch {n_batch}, {n_threads} threads: logits differ by up to {diff:.3g}"


def test_state_round_trip(tmp_path, default_model_file):
    model = gemma3_edge.Model(default_model_file, n_ctx=1024, n_threads=2)
    system = model.tokenize("You are a helpful assistant who answers in one sentence. " * 8)
    model.next_logits(system)
    path = tmp_path / "system.state"
    model.save_state(path)

    fresh = gemma3_edge.Model(default_model_file, n_ctx=1024, n_threads=2)
    assert fresh.load_state(path) == system
    question = system + fresh.tokenize(" What is the capital of France?", add_bos=False)
    warm = fresh.next_logits(question)
    assert fresh.last_stats.cached_prompt_tokens == len(system)
    cold = gemma3_edge.Model(default_model_file, n_ctx=1024, n_threads=2).next_logits(question)
    assert np.abs(warm - cold).max() <= 1e-3 * np.abs(cold).max()


def test_state_rejects_other_settings_and_garbage(tmp_path, default_model_file):
    model = gemma3_edge.Model(default_model_file, n_ctx=1024, n_threads=1)
    model.next_logits(model.tokenize("Hello there"))
    path = tmp_path / "s.state"
    model.save_state(path)
    other = gemma3_edge.Model(default_model_file, n_ctx=512, n_threads=1)
    with pytest.raises(ValueError, match="other context settings"):
        other.load_state(path)
    data = path.read_bytes()
    for broken in [b"", b"G3ES", data[:-7], b"XXXX" + data[4:], data[:20] + b"\xff" * 8 + data[28:]]:
        path.write_bytes(broken)
        with pytest.raises(ValueError):
            model.load_state(path)
    # A failed load leaves an empty, usable cache.
    assert model.next_logits(model.tokenize("Hello")).shape == (model.n_vocab,)
