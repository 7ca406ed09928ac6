"""Prompts that extend what the cache holds reuse it, and give the logits of a cold run."""

from __future__ import annotations

import numpy as np

import gemma3_edge


def test_second_turn_reuses_prefix(default_model_file):
    model = gemma3_edge.Model(default_model_file, n_ctx=2048, n_threads=2)
    first = model.tokenize("The capital of France is")
    model.generate(first, max_tokens=8, temperature=0)
    assert model.last_stats.cached_prompt_tokens == 0
    answer = model.last_stats.token_ids
    second = first + answer + model.tokenize(" and the capital of Italy is", add_bos=False)
    warm = model.generate(second, max_tokens=8, temperature=0)
    stats = model.last_stats
    # Everything up to the last evaluated answer token is reused.
    assert stats.cached_prompt_tokens == len(first) + len(answer) - 1
    cold_model = gemma3_edge.Model(default_model_file, n_ctx=2048, n_threads=2)
    cold = cold_model.generate(second, max_tokens=8, temperature=0)
    assert warm == cold


def test_reuse_after_window_wrap_matches_cold_logits(default_model_file):
    # n_batch 64 makes the sliding layers' ring 512 + 64 slots, so a 900-token history wraps it.
    model = gemma3_edge.Model(default_model_file, n_ctx=2048, n_batch=64, n_threads=2)
    rng = np.random.default_rng(5)
    history = [2] + [int(t) for t in rng.integers(1000, 200000, size=900)]
    model.generate(history, max_tokens=1, temperature=0)
    # Extending the history reuses it; branching far back cannot, and must recompute.
    extended = history + [int(t) for t in rng.integers(1000, 200000, size=20)]
    branched = history[:300] + [int(t) for t in rng.integers(1000, 200000, size=20)]
    cold = gemma3_edge.Model(default_model_file, n_ctx=2048, n_batch=64, n_threads=2)
    for ids, expect_reuse in [(extended, True), (branched, False)]:
        warm = model.next_logits(ids)
        assert (model.last_stats.cached_prompt_tokens > 0) == expect_reuse
        cold.logits([2])  # empties the cold model's cache
        expected = cold.next_logits(ids)
        assert cold.last_stats.cached_prompt_tokens == 0
        # Reuse evaluates the new tokens in a shorter chunk than the cold run; the quantized
        # kernels compute each row the same way, so only float summation order may differ.
        assert np.abs(warm - expected).max() <= 1e-3 * np.abs(expected).max()
        assert warm.argmax() == expected.argmax()
