"""Model.chat, create_chat_completion and create_completion: shapes as llama-cpp-python returns
them, log-probabilities, multi-turn cache reuse, cancellation and conversation files."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import gemma3_edge
from gemma3_edge import chat

QUESTION = [{"role": "user", "content": "Name three colours."}]
GREEDY = dict(temperature=0, max_tokens=6)


@pytest.fixture(scope="module")
def model(default_model_file):
    return gemma3_edge.Model(default_model_file, n_ctx=1024, n_threads=2)


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    top = row.max()
    return row - (top + np.log(np.exp(row - top).sum()))


def test_chat_completion_shape(model):
    result = model.create_chat_completion(QUESTION, **GREEDY)
    assert set(result) == {"id", "object", "created", "model", "choices", "usage"}
    assert result["id"].startswith("chatcmpl-")
    assert result["object"] == "chat.completion"
    assert isinstance(result["created"], int)
    assert result["model"] == model.path.stem
    (choice,) = result["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    usage = result["usage"]
    assert usage["prompt_tokens"] == len(chat.chat_token_ids(model, QUESTION))
    assert usage["completion_tokens"] == model.last_stats.completion_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    expected = model.generate(chat.chat_token_ids(model, QUESTION), **GREEDY)
    assert choice["message"]["content"] == expected
    json.dumps(result)


def test_chat_equals_completion_content(model):
    assert model.chat(QUESTION, **GREEDY) == model.create_chat_completion(QUESTION, **GREEDY)["choices"][0]["message"]["content"]


def test_chat_stream_chunks(model):
    whole = model.create_chat_completion(QUESTION, **GREEDY)
    chunks = list(model.create_chat_completion(QUESTION, stream=True, **GREEDY))
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    middle = chunks[1:-1]
    assert middle
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in middle)
    assert text == whole["choices"][0]["message"]["content"]


def test_chat_logprobs_match_logits(model):
    result = model.create_chat_completion(QUESTION, logprobs=True, top_logprobs=3, **GREEDY)
    completion_ids = model.last_stats.token_ids
    content = result["choices"][0]["logprobs"]["content"]
    assert len(content) == len(completion_ids) == result["usage"]["completion_tokens"]
    prompt_ids = chat.chat_token_ids(model, QUESTION)
    rows = model.logits(prompt_ids + completion_ids)[len(prompt_ids) - 1 :]
    for position, (entry, token) in enumerate(zip(content, completion_ids)):
        expected = log_softmax(rows[position])
        # Teacher-forced rows come from one batch and generation from one token at a time. Both are
        # float32 logits, so the log-probabilities may differ in float summation order only.
        assert entry["logprob"] == pytest.approx(expected[token], abs=1e-3)
        assert bytes(entry["bytes"]) == model.detokenize_bytes([token])
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["logprob"] == pytest.approx(expected.max(), abs=1e-3)
        # Greedy decoding picks the most likely token.
        assert top[0]["token"] == entry["token"]
    text = "".join(entry["token"] for entry in content)
    assert text == result["choices"][0]["message"]["content"]


def test_chat_stream_logprobs_cover_tokens(model):
    chunks = list(model.create_chat_completion(QUESTION, stream=True, logprobs=True, top_logprobs=1, **GREEDY))
    entries = []
    for chunk in chunks:
        logprobs = chunk["choices"][0]["logprobs"]
        if logprobs is not None:
            entries += logprobs["content"]
    assert len(entries) == model.last_stats.completion_tokens


def test_completion_shape_and_logprobs(model):
    prompt = "The capital of France is"
    result = model.create_completion(prompt, max_tokens=5, temperature=0, logprobs=2)
    assert result["id"].startswith("cmpl-")
    assert result["object"] == "text_completion"
    (choice,) = result["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["text"] == model.generate(prompt, max_tokens=5, temperature=0)
    assert result["usage"]["prompt_tokens"] == len(model.tokenize(prompt))
    logprobs = choice["logprobs"]
    assert set(logprobs) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"][0] == 0
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"]):
        assert choice["text"][offset : offset + len(token)] == token
    for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert top[token] == value
        assert value <= 0
        assert max(top.values()) == value  # greedy


def test_completion_stream_matches(model):
    whole = model.create_completion("One, two, three,", max_tokens=6, temperature=0)
    chunks = list(model.create_completion("One, two, three,", max_tokens=6, temperature=0, stream=True))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_completion_stop_string(model):
    whole = model.create_completion("One, two, three,", max_tokens=8, temperature=0)["choices"][0]["text"]
    cut = whole.index(",") if "," in whole else None
    assert cut is not None, f"expected a comma in the greedy continuation, got {whole!r}"
    result = model.create_completion("One, two, three,", max_tokens=8, temperature=0, stop=",")
    assert result["choices"][0]["text"] == whole[:cut]
    assert result["choices"][0]["finish_reason"] == "stop"


def test_three_turns_reuse_cache(model, default_model_file):
    conversation = [{"role": "user", "content": "Hello, who are you?"}]
    previous_prompt = 0
    for turn in range(3):
        answer = model.chat(conversation, max_tokens=8, temperature=0)
        stats = model.last_stats
        if turn > 0:
            assert stats.cached_prompt_tokens > 0
            # Everything up to the previous prompt's end is reused (the last prompt token is always recomputed).
            assert stats.cached_prompt_tokens >= previous_prompt - 1
        previous_prompt = stats.prompt_tokens
        conversation += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"Question {turn + 2}?"}]
        if turn == 1:
            # The prompt of turn 3, evaluated on the warm cache, against a cold model.
            ids = chat.chat_token_ids(model, conversation)
            warm = model.next_logits(ids)
            assert model.last_stats.cached_prompt_tokens > 0
            cold_model = gemma3_edge.Model(default_model_file, n_ctx=1024, n_threads=2)
            cold = cold_model.next_logits(ids)
            assert cold_model.last_stats.cached_prompt_tokens == 0
            # Reuse evaluates the new tokens in a shorter chunk than the cold run. Rows are computed
            # independently, so only float summation order may differ (measured: identical on AVX2).
            assert np.abs(warm - cold).max() <= 1e-3 * np.abs(cold).max()
            assert warm.argmax() == cold.argmax()


def test_cancel_event_stops_stream(model):
    cancel = threading.Event()
    chunks = model.create_chat_completion(QUESTION, max_tokens=50, temperature=0, stream=True, cancel_event=cancel)
    received = [next(chunks), next(chunks)]  # the role chunk and the first content chunk
    cancel.set()
    received += list(chunks)
    assert received[-1]["choices"][0]["finish_reason"] == "cancelled"
    assert model.last_stats.completion_tokens <= 2


def test_cancel_before_start(model):
    cancel = threading.Event()
    cancel.set()
    result = model.create_completion("Hello", max_tokens=5, cancel_event=cancel)
    assert result["choices"][0]["finish_reason"] == "cancelled"
    assert result["choices"][0]["text"] == ""
    assert result["usage"]["completion_tokens"] == 0
    assert result["usage"]["prompt_tokens"] == len(model.tokenize("Hello"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "vision tower"),
    (dict(top_logprobs=2), "needs logprobs"),
    (dict(logprobs=True, top_logprobs=21), "from 0 to 20"),
    (dict(logprobs="yes"), "true or false"),
    (dict(temperature=-1, stream=True), "temperature"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(messages=[{"role": "user", "content": "word " * 1100}]), "n_ctx"),
])
def test_chat_completion_rejects(model, kwargs, message):
    kwargs = {"messages": QUESTION, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.create_chat_completion(**kwargs)


def test_completion_rejects_bad_logprobs(model):
    with pytest.raises(ValueError, match="logprobs"):
        model.create_completion("Hi", logprobs=-1)


def test_conversation_file_round_trip(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße 🌍"},
                {"role": "assistant", "content": "Hallo"}]
    path = tmp_path / "conversation.json"
    chat.save_conversation(path, messages)
    assert chat.load_conversation(path) == messages
    assert [p.name for p in tmp_path.iterdir()] == ["conversation.json"]
    path.write_text(json.dumps(messages[1:]), encoding="utf-8")
    assert chat.load_conversation(path) == messages[1:]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other", "messages": []}', "not a gemma3-edge-conversation"),
    ('{"format": "gemma3-edge-conversation", "version": 99, "messages": []}', "version 99"),
    ('[{"role": "assistant", "content": "x"}]', "must alternate"),
    ('{"format": "gemma3-edge-conversation", "version": 1}', "no list of messages"),
])
def test_conversation_file_invalid(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        chat.load_conversation(path)
