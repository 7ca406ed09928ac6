"""A long multi-turn chat computes only each turn's new tokens and matches a cold run."""

from __future__ import annotations

import numpy as np

import gemma3_edge
from gemma3_edge.chat import chat_token_ids

QUESTIONS = [
    "Tell me about the history of Paris in a few paragraphs.",
    "What rivers flow through the city?",
    "Describe the architecture of its cathedrals.",
    "Which museums should a visitor see first, and why?",
    "How did the city change in the nineteenth century?",
    "What is the food like in its markets?",
    "Name some famous writers who lived there.",
    "How is the public transport organised?",
    "What happens in the city during the summer?",
    "Summarise our conversation so far.",
]


def test_ten_turns_reuse_every_earlier_turn(default_model_file):
    model = gemma3_edge.Model(default_model_file, n_ctx=4096, n_threads=2)
    messages = [{"role": "system", "content": "You are a knowledgeable travel guide. " * 40}]
    previous_prompt = 0
    for turn, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": question * 3})
        reply = model.chat(messages, max_tokens=150, temperature=0, repeat_penalty=1.3)
        stats = model.last_stats
        if turn > 0:
            # Everything the previous turn evaluated is reused; only the new turn is computed.
            assert stats.cached_prompt_tokens >= previous_prompt, (
                f"turn {turn + 1}: reused {stats.cached_prompt_tokens} of {stats.prompt_tokens} prompt tokens, "
                f"the previous prompt alone had {previous_prompt}"
            )
        previous_prompt = stats.prompt_tokens
        messages.append({"role": "assistant", "content": reply})

    final = chat_token_ids(model, messages + [{"role": "user", "content": "Thank you!"}])
    assert len(final) > 2000, f"the transcript has only {len(final)} tokens"
    warm = model.next_logits(final)
    assert model.last_stats.cached_prompt_tokens >= previous_prompt
    cold = gemma3_edge.Model(default_model_file, n_ctx=4096, n_threads=2).next_logits(final)
    # Same tokens, same kernels; only the chunking differs, which changes at most the float
    # summation order.
    assert np.abs(warm - cold).max() <= 1e-3 * np.abs(cold).max()
    assert warm.argmax() == cold.argmax()
