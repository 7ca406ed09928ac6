"""A 16K-token prompt runs in one call with an int8 KV cache and stays within the int8 bar."""

from __future__ import annotations

import numpy as np
import pytest

import gemma3_edge

PROMPT_TOKENS = 16384
GENERATED = 256


@pytest.mark.slow
def test_16k_prompt_int8_kv_agrees_with_f32(default_model_file, wikitext):
    n_ctx = PROMPT_TOKENS + GENERATED + 1
    reference_model = gemma3_edge.Model(default_model_file, n_ctx=n_ctx, n_threads=2, kv_type="f32")
    prompt = reference_model.tokenize(wikitext)[:PROMPT_TOKENS]
    assert len(prompt) == PROMPT_TOKENS
    reference_model.generate(prompt, max_tokens=GENERATED, temperature=0)
    generated = reference_model.last_stats.token_ids
    sequence = prompt + generated
    start = len(prompt) - 1
    reference = reference_model.logits(sequence, start=start)[:-1]
    del reference_model

    model = gemma3_edge.Model(default_model_file, n_ctx=n_ctx, n_threads=2, kv_type="int8")
    logits = model.logits(sequence, start=start)[:-1]
    top = reference.argmax(axis=1)
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    agree = logits.argmax(axis=1) == top
    # The int8 KV bar: 100% where the f32-KV run leads by >= 0.5 logit, >= 97% overall.
    assert agree[margin >= 0.5].all(), f"{agree[margin >= 0.5].mean():.4f} where margin >= 0.5"
    assert agree.mean() >= 0.97, f"{agree.mean():.4f} overall"
