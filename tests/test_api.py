"""The Python API on the default model: argument checks, sampling, stop handling, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gemma3_edge


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"max_tokens": -5}, "max_tokens must be >= 1"),
        ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"min_p": 2.0}, r"min_p must be in \[0, 1\]"),
        ({"repeat_penalty": 0.0}, "repeat_penalty must be a finite number > 0"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_generate_rejects_bad_arguments(quantized_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantized_model.generate("Hello", **kwargs)


def test_generate_rejects_bad_stop_type(quantized_model):
    with pytest.raises(TypeError, match="stop must be a string or a list of strings"):
        quantized_model.generate("Hello", stop=5)


def test_empty_prompt_rejected(quantized_model):
    with pytest.raises(ValueError, match="prompt is empty"):
        quantized_model.generate([])


def test_prompt_longer_than_context_rejected(default_model_file):
    model = gemma3_edge.Model(default_model_file, n_ctx=16, n_threads=1)
    with pytest.raises(ValueError, match="leaves no room to generate in n_ctx 16"):
        model.generate("word " * 40)


def test_constructor_rejects_bad_values(default_model_file):
    with pytest.raises(ValueError, match="n_threads must be >= 1"):
        gemma3_edge.Model(default_model_file, n_threads=0)
    with pytest.raises(ValueError, match="exceeds the model's context length 32768"):
        gemma3_edge.Model(default_model_file, n_ctx=40000)
    with pytest.raises(ValueError, match="precision must be one of"):
        gemma3_edge.Model(default_model_file, precision="int3")


def test_token_ids_out_of_range(quantized_model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        quantized_model.logits([2, 262144])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        quantized_model.detokenize([-1])


def test_seed_reproducible(quantized_model):
    kwargs = dict(max_tokens=12, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    first = quantized_model.generate("Once upon a time", seed=7, **kwargs)
    again = quantized_model.generate("Once upon a time", seed=7, **kwargs)
    assert first == again
    others = {quantized_model.generate("Once upon a time", seed=s, **kwargs) for s in range(8, 12)}
    assert len(others | {first}) > 1, "five seeds at temperature 1 gave one text: the seed is ignored"


def test_greedy_matches_logits_argmax(quantized_model):
    prompt = quantized_model.tokenize("The quick brown fox")
    text = quantized_model.generate(prompt, max_tokens=6, temperature=0)
    generated = quantized_model.last_stats.token_ids
    assert len(generated) == 6
    # Teacher-forced logits over prompt + generated must pick each generated token.
    logits = quantized_model.logits(prompt + generated[:-1])
    assert list(logits[len(prompt) - 1 :].argmax(axis=1)) == generated
    assert text == quantized_model.detokenize(generated)


def test_stream_pieces_join_to_text(quantized_model):
    streamed = list(quantized_model.generate("The capital of France is", max_tokens=20, temperature=0, stream=True))
    whole = quantized_model.generate("The capital of France is", max_tokens=20, temperature=0)
    assert "".join(streamed) == whole
    assert len(streamed) > 1


def test_stop_string_cuts_text(quantized_model):
    whole = quantized_model.generate("The capital of France is", max_tokens=30, temperature=0)
    stop = whole[10:14]
    cut = quantized_model.generate("The capital of France is", max_tokens=30, temperature=0, stop=[stop])
    assert cut == whole[: whole.index(stop)]
    assert quantized_model.last_stats.finish_reason == "stop"
    streamed = "".join(quantized_model.generate("The capital of France is", max_tokens=30, temperature=0, stop=stop, stream=True))
    assert streamed == cut


def test_finish_reason_length(quantized_model):
    quantized_model.generate("Count: 1, 2, 3,", max_tokens=3, temperature=0)
    assert quantized_model.last_stats.finish_reason == "length"
    assert quantized_model.last_stats.completion_tokens == 3


def test_tokenize_special_flag(quantized_model):
    plain = quantized_model.tokenize("<start_of_turn>user", add_bos=False)
    special = quantized_model.tokenize("<start_of_turn>user", add_bos=False, special=True)
    assert special[0] == 105
    assert 105 not in plain
    assert quantized_model.detokenize(plain) == "<start_of_turn>user"


def test_threads_share_model_safely(quantized_model):
    prompts = ["The capital of France is", "Water boils at", "My favourite colour is", "In 1492,"]
    expected = {p: quantized_model.generate(p, max_tokens=8, temperature=0) for p in prompts}
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(prompt: str) -> None:
        try:
            results[prompt] = quantized_model.generate(prompt, max_tokens=8, temperature=0)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert results == expected


def test_logits_are_finite(quantized_model):
    logits = quantized_model.logits(quantized_model.tokenize("Hello world"))
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
