"""Invalid arguments to the Python API raise ValueError or TypeError naming the argument (or do
what the API documents), never crash, and leave the model usable. One table row per case."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gemma3_edge
from tiny_gguf import write_tiny_gemma3

N_CTX = 256
CHAT = [{"role": "user", "content": "Hi"}]
IMAGE_CHAT = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                           {"type": "text", "text": "What is this?"}]}]


@pytest.fixture(scope="module")
def model(default_model_file):
    return gemma3_edge.Model(default_model_file, n_ctx=N_CTX, n_threads=2)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    # context_length 256: n_ctx above it must be rejected.
    return write_tiny_gemma3(tmp_path_factory.mktemp("tiny") / "tiny.gguf", context_length=256)


@pytest.fixture(scope="module")
def reference_answer(model):
    """A greedy answer taken before any bad call; compared again at the end of the module."""
    return model.generate("The capital of France is", max_tokens=8, temperature=0)


def generate(**kwargs):
    arguments = {"max_tokens": 2, "temperature": 0}
    arguments.update(kwargs)
    prompt = arguments.pop("prompt", "Hello")
    return lambda model: model.generate(prompt, **arguments)


def chat(messages=CHAT, **kwargs):
    arguments = {"max_tokens": 2, "temperature": 0}
    arguments.update(kwargs)
    return lambda model: model.create_chat_completion(messages, **arguments)


# (id, call on the model, expected exception, regex the message must match; None: must succeed)
GENERATE_CASES = [
    ("max_tokens_zero", generate(max_tokens=0), ValueError, r"max_tokens must be >= 1, got 0"),
    ("max_tokens_negative", generate(max_tokens=-3), ValueError, r"max_tokens must be >= 1, got -3"),
    ("max_tokens_float", generate(max_tokens=2.5), TypeError, r"max_tokens must be an integer, got float"),
    ("max_tokens_string", generate(max_tokens="4"), TypeError, r"max_tokens must be an integer, got str"),
    ("max_tokens_bool", generate(max_tokens=True), TypeError, r"max_tokens must be an integer, got bool"),
    ("temperature_negative", generate(temperature=-0.1), ValueError, r"temperature must be a finite number >= 0"),
    ("temperature_nan", generate(temperature=math.nan), ValueError, r"temperature must be a finite number >= 0"),
    ("temperature_inf", generate(temperature=math.inf), ValueError, r"temperature must be a finite number >= 0"),
    ("temperature_neg_inf", generate(temperature=-math.inf), ValueError, r"temperature"),
    ("top_p_zero", generate(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    ("top_p_negative", generate(top_p=-0.5), ValueError, r"top_p must be in \(0, 1\]"),
    ("top_p_above_one", generate(top_p=1.01), ValueError, r"top_p must be in \(0, 1\]"),
    ("top_p_nan", generate(top_p=math.nan), ValueError, r"top_p must be in \(0, 1\]"),
    ("top_p_one", generate(top_p=1.0), None, None),
    ("top_k_negative", generate(top_k=-1), ValueError, r"top_k must be >= 0"),
    ("top_k_zero", generate(top_k=0), None, None),
    ("min_p_negative", generate(min_p=-0.01), ValueError, r"min_p must be in \[0, 1\]"),
    ("min_p_above_one", generate(min_p=1.5), ValueError, r"min_p must be in \[0, 1\]"),
    ("min_p_nan", generate(min_p=math.nan), ValueError, r"min_p must be in \[0, 1\]"),
    ("min_p_one", generate(min_p=1.0), None, None),
    ("repeat_penalty_zero", generate(repeat_penalty=0.0), ValueError, r"repeat_penalty must be a finite number > 0"),
    ("repeat_penalty_negative", generate(repeat_penalty=-1.0), ValueError, r"repeat_penalty must be a finite number > 0"),
    ("repeat_penalty_nan", generate(repeat_penalty=math.nan), ValueError, r"repeat_penalty"),
    ("repeat_penalty_inf", generate(repeat_penalty=math.inf), ValueError, r"repeat_penalty"),
    ("seed_negative", generate(seed=-1), ValueError, r"seed must be >= 0, got -1"),
    ("seed_huge", generate(seed=2**80), None, None),  # documented: reduced modulo 2^64
    ("stop_int", generate(stop=5), TypeError, r"stop must be a string or a list of strings, got int"),
    ("stop_list_of_int", generate(stop=["a", 5]), TypeError, r"each stop must be a string, got int"),
    ("stop_set", generate(stop={"a"}), TypeError, r"stop must be a string or a list of strings, got set"),
    ("stop_empty_string", generate(stop=""), None, None),  # documented: empty stop strings are ignored
    ("logprobs_negative", generate(logprobs=-1), ValueError, r"logprobs must be >= 0, got -1"),
    ("logprobs_string", generate(logprobs="3"), TypeError, r"logprobs must be an integer, got str"),
    ("prompt_empty_text", generate(prompt=""), None, None),  # text is encoded with BOS: generates from BOS alone
    ("prompt_empty_ids", generate(prompt=[]), ValueError, r"prompt is empty"),
    ("prompt_id_negative", generate(prompt=[2, -1]), ValueError, r"prompt token id -1 is outside the vocabulary"),
    ("prompt_id_vocab", generate(prompt=[2, 262144]), ValueError, r"prompt token id 262144 is outside the vocabulary"),
    ("prompt_id_huge", generate(prompt=[2, 2**70]), ValueError, r"outside the vocabulary"),
    ("prompt_too_long", generate(prompt="word " * 400), ValueError, r"prompt has \d+ tokens, which leaves no room"),
    ("prompt_ids_fill_context", generate(prompt=[2] * N_CTX), ValueError, r"prompt has 256 tokens"),
    ("prompt_invalid_utf8", generate(prompt=b"\xff\xfe caf\xc3"), None, None),  # documented: byte pieces
    ("prompt_lone_surrogate", generate(prompt="abc\ud800def"), ValueError, r"lone surrogate at index 3"),
    ("special_control_text", generate(prompt="<start_of_turn>user\nHi", special=True), None, None),
    ("special_string", generate(special="yes"), TypeError, r"special must be True or False, got str"),
    ("stream_int", generate(stream=1), TypeError, r"stream must be True or False, got int"),
    ("temperature_string", generate(temperature="hot"), TypeError, r"temperature must be a number, got str \('hot'\)"),
    ("temperature_none", generate(temperature=None), TypeError, r"temperature must be a number, got NoneType"),
    ("temperature_bool", generate(temperature=True), TypeError, r"temperature must be a number, got bool"),
    ("top_p_string", generate(top_p="0.9"), TypeError, r"top_p must be a number, got str"),
    ("min_p_none", generate(min_p=None), TypeError, r"min_p must be a number, got NoneType"),
    ("repeat_penalty_list", generate(repeat_penalty=[1.1]), TypeError, r"repeat_penalty must be a number, got list"),
    ("top_k_float", generate(top_k=2.7), TypeError, r"top_k must be an integer, got float"),
    ("top_k_huge", generate(top_k=2**40), ValueError, r"top_k must be <= 2147483647, got 1099511627776"),
    ("top_k_above_vocab", generate(top_k=10**6), None, None),  # documented: keeps every token
    ("prompt_id_float", generate(prompt=[2, 1.5]), TypeError, r"prompt token id 1\.5 at index 1 of prompt is a float"),
    ("prompt_id_string", generate(prompt=[2, "7"]), TypeError, r"prompt token id '7' at index 1 of prompt is a str"),
    ("prompt_id_bool", generate(prompt=[2, True]), TypeError, r"prompt token id True at index 1 of prompt is a bool"),
    ("prompt_ids_numpy", generate(prompt=np.array([2, 818, 5279])), None, None),
    ("prompt_ids_numpy_float", generate(prompt=np.array([2.0, 818.0])), TypeError, r"prompt token id .* is a float64"),
    ("prompt_none", generate(prompt=None), TypeError,
     r"prompt must be text \(str or bytes\) or a sequence of token ids, got NoneType"),
    ("prompt_int", generate(prompt=5), TypeError, r"prompt must be text .* got int"),
    ("prompt_set", generate(prompt={2, 3}), TypeError, r"prompt must be text .* got set"),
]

CHAT_CASES = [
    ("chat_image_without_vision", chat(IMAGE_CHAT), ValueError, r"image.*(vision|no vision tower)"),
    ("chat_messages_string", chat("hello"), ValueError, r"messages must be a list"),
    ("chat_messages_empty", chat([]), ValueError, r"messages is empty"),
    ("chat_role_unknown", chat([{"role": "robot", "content": "x"}]), ValueError, r"messages\[0\] has role 'robot'"),
    ("chat_content_int", chat([{"role": "user", "content": 5}]), ValueError, r"messages\[0\] content must be"),
    ("chat_part_unknown", chat([{"role": "user", "content": [{"type": "audio"}]}]), ValueError,
     r"messages\[0\]\.content\[0\] has type 'audio'"),
    ("chat_roles_not_alternating", chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
     ValueError, r"messages\[1\] has role 'user' but roles must alternate"),
    ("chat_temperature_nan", chat(temperature=math.nan), ValueError, r"temperature"),
    ("chat_max_tokens_zero", chat(max_tokens=0), ValueError, r"max_tokens must be >= 1"),
    ("chat_logprobs_not_bool", chat(logprobs="yes"), ValueError, r"logprobs must be true or false"),
    ("chat_top_logprobs_too_many", chat(logprobs=True, top_logprobs=21), ValueError, r"top_logprobs must be from 0 to 20"),
    ("chat_top_logprobs_without_logprobs", chat(top_logprobs=2), ValueError, r"top_logprobs=2 needs logprobs=true"),
    ("chat_stop_list_of_int", chat(stop=[1]), TypeError, r"each stop must be a string"),
    ("chat_temperature_string", chat(temperature="0.5"), TypeError, r"temperature must be a number, got str"),
    ("chat_top_k_float", chat(top_k=4.0), TypeError, r"top_k must be an integer, got float"),
    ("completion_prompt_none", lambda m: m.create_completion(None, max_tokens=2), TypeError,
     r"prompt must be text .* got NoneType"),
    ("completion_prompt_id_float", lambda m: m.create_completion([2, 3.5], max_tokens=2), TypeError,
     r"prompt token id 3\.5 at index 1"),
]

OTHER_CASES = [
    ("tokenize_int", lambda m: m.tokenize(5), TypeError, r"text must be str or bytes, got int"),
    ("tokenize_none", lambda m: m.tokenize(None), TypeError, r"text must be str or bytes, got NoneType"),
    ("tokenize_surrogate", lambda m: m.tokenize("\udfff"), ValueError, r"lone surrogate"),
    ("detokenize_negative", lambda m: m.detokenize([-1]), ValueError, r"token id -1 is outside the vocabulary"),
    ("detokenize_vocab", lambda m: m.detokenize([262144]), ValueError, r"token id 262144 is outside the vocabulary"),
    ("logits_empty", lambda m: m.logits([]), ValueError, r"token_ids is empty"),
    ("logits_too_long", lambda m: m.logits([2] * (N_CTX + 1)), ValueError, r"257 tokens do not fit in n_ctx 256"),
    ("logits_start_out_of_range", lambda m: m.logits([2, 3], start=2), ValueError, r"start must be in 0..1, got 2"),
    ("logits_id_outside_vocab", lambda m: m.logits([2, 10**6]), ValueError, r"token id 1000000 .*outside the vocabulary"),
    ("logits_id_float", lambda m: m.logits([2, 3.0]), TypeError, r"token id 3\.0 at index 1 of token_ids is a float"),
    ("logits_ids_none", lambda m: m.logits(None), TypeError, r"token_ids must be a sequence of token ids, got NoneType"),
    ("logits_start_float", lambda m: m.logits([2, 3], start=0.5), TypeError, r"start must be an integer, got float"),
    ("logits_start_negative", lambda m: m.logits([2, 3], start=-1), ValueError, r"start must be >= 0, got -1"),
    ("next_logits_id_string", lambda m: m.next_logits([2, "3"]), TypeError, r"token id '3' at index 1 of token_ids"),
    ("detokenize_id_float", lambda m: m.detokenize([2.5]), TypeError, r"token id 2\.5 at index 0 of ids is a float"),
    ("detokenize_string", lambda m: m.detokenize("abc"), TypeError, r"ids must be a sequence of token ids, got str"),
    ("next_logits_empty", lambda m: m.next_logits([]), ValueError, r"token_ids is empty"),
    ("perplexity_n_ctx_small", lambda m: m.perplexity("some text " * 50, n_ctx=2), ValueError, r"n_ctx must be >= 4"),
    ("perplexity_n_ctx_large", lambda m: m.perplexity("x", n_ctx=N_CTX + 1), ValueError, r"exceeds the model's n_ctx"),
    ("kv_cache_bytes_unknown_type", lambda m: m.kv_cache_bytes(16, "q4"), ValueError, r"kv_type must be one of"),
]


def table():
    params = []
    for case_id, call, error, pattern in GENERATE_CASES + CHAT_CASES + OTHER_CASES:
        params.append(pytest.param(call, error, pattern, id=case_id))
    return params


@pytest.mark.parametrize("call, error, pattern", table())
def test_argument(model, reference_answer, call, error, pattern):
    if error is None:
        result = call(model)
        assert result is not None
        return
    with pytest.raises(error, match=pattern):
        call(model)


CONSTRUCTOR_CASES = [
    ("n_ctx_zero", {"n_ctx": 0}, ValueError, r"n_ctx must be >= 1, got 0"),
    ("n_ctx_negative", {"n_ctx": -5}, ValueError, r"n_ctx must be >= 1, got -5"),
    ("n_ctx_above_model", {"n_ctx": 257}, ValueError, r"n_ctx 257 exceeds the model's context length 256"),
    ("n_ctx_huge", {"n_ctx": 2**62}, ValueError, r"exceeds the model's context length"),
    ("n_ctx_float", {"n_ctx": 64.0}, TypeError, r"n_ctx must be an integer, got float"),
    ("n_ctx_string", {"n_ctx": "64"}, TypeError, r"n_ctx must be an integer, got str"),
    ("n_threads_zero", {"n_threads": 0}, ValueError, r"n_threads must be >= 1, got 0"),
    ("n_threads_negative", {"n_threads": -2}, ValueError, r"n_threads must be >= 1"),
    ("n_threads_string", {"n_threads": "2"}, TypeError, r"n_threads must be an integer"),
    # Starting a million threads failed midway and crashed the process (threads left running).
    ("n_threads_huge", {"n_threads": 1_000_000}, ValueError, r"n_threads must be between 1 and 512, got 1000000"),
    ("n_batch_zero", {"n_batch": 0}, ValueError, r"n_batch must be >= 1, got 0"),
    ("n_batch_negative", {"n_batch": -1}, ValueError, r"n_batch must be >= 1"),
    ("kv_type_unknown", {"kv_type": "q4_0"}, ValueError, r"kv_type must be one of \('f32', 'f16', 'int8'\), got 'q4_0'"),
    ("kv_type_none", {"kv_type": None}, ValueError, r"kv_type must be one of"),
    ("precision_unknown", {"precision": "int4"}, ValueError, r"precision must be one of"),
]


@pytest.mark.parametrize("options, error, pattern",
                         [pytest.param(o, e, p, id=i) for i, o, e, p in CONSTRUCTOR_CASES])
def test_constructor_argument(tiny_path, options, error, pattern):
    arguments = {"n_ctx": 64, "n_threads": 1}
    arguments.update(options)
    with pytest.raises(error, match=pattern):
        gemma3_edge.Model(tiny_path, **arguments)


def test_constructor_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        gemma3_edge.Model(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        gemma3_edge.Model(tmp_path)  # a directory
    with pytest.raises(TypeError):
        gemma3_edge.Model(42)


def test_model_usable_after_bad_calls(model, reference_answer):
    """Runs after the table (pytest keeps file order): the bad calls left no trace."""
    assert model.generate("The capital of France is", max_tokens=8, temperature=0) == reference_answer
    fresh = gemma3_edge.Model(model.path, n_ctx=N_CTX, n_threads=2)
    assert fresh.generate("The capital of France is", max_tokens=8, temperature=0) == reference_answer
