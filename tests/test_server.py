"""The OpenAI-compatible server, driven by the official openai client over loopback HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time

import openai
import pytest
import uvicorn

import gemma3_edge
from gemma3_edge.server import create_app

CHAT = [{"role": "user", "content": "Name three colours."}]
OTHER_CHAT = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is a cat?"}]
COUNTING = "1, 2, 3, 4, 5,"


@contextlib.contextmanager
def running_server(app):
    """Serve app with uvicorn on a free loopback port, in a thread; yield the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread stopped during startup"
        assert time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture(scope="module")
def model(default_model_file):
    return gemma3_edge.Model(default_model_file, n_ctx=1024, n_threads=2)


@pytest.fixture(scope="module")
def port(model):
    with running_server(create_app(model)) as port:
        yield port


@pytest.fixture(scope="module")
def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)


def raw_request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_until_idle(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while raw_request(port, "GET", "/health")[1]["pending_requests"] != 0:
        assert time.monotonic() < deadline, f"the server still had pending requests after {seconds} s"
        time.sleep(0.05)


def ask(client, messages, stream=False, max_tokens=8):
    if not stream:
        result = client.chat.completions.create(model="gemma3", messages=messages, max_tokens=max_tokens,
                                                temperature=0)
        return result.choices[0].message.content, result.choices[0].finish_reason
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="gemma3", messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True):
        choice = chunk.choices[0]
        if choice.delta.content:
            pieces.append(choice.delta.content)
        finish = choice.finish_reason or finish
    return "".join(pieces), finish


def test_health_and_models(port, client, model):
    status, body = raw_request(port, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [model.path.stem]


def test_chat_matches_python_api(client, model):
    result = client.chat.completions.create(model="gemma3", messages=CHAT, max_tokens=8, temperature=0)
    expected = model.create_chat_completion(CHAT, max_tokens=8, temperature=0)
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-")
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert result.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert result.usage.completion_tokens == expected["usage"]["completion_tokens"]


def test_chat_stream_matches_non_stream(client):
    assert ask(client, CHAT, stream=True) == ask(client, CHAT)


def test_chat_stream_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="gemma3", messages=CHAT, max_tokens=4, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"


def test_chat_logprobs(client):
    result = client.chat.completions.create(model="gemma3", messages=CHAT, max_tokens=4, temperature=0,
                                            logprobs=True, top_logprobs=2)
    content = result.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(entry.token for entry in content) == result.choices[0].message.content
    assert all(len(entry.top_logprobs) == 2 for entry in content)


def test_completions_stream_and_not(client, model):
    result = client.completions.create(model="gemma3", prompt=COUNTING, max_tokens=6, temperature=0)
    expected = model.create_completion(COUNTING, max_tokens=6, temperature=0)
    assert result.object == "text_completion"
    assert result.choices[0].text == expected["choices"][0]["text"]
    streamed = client.completions.create(model="gemma3", prompt=COUNTING, max_tokens=6, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == result.choices[0].text


def test_two_clients_at_once(port, client):
    sequential = [ask(client, CHAT), ask(client, OTHER_CHAT, stream=True)]
    results = [None, None]
    start = threading.Barrier(2)

    def run(index, messages, stream):
        own_client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                   timeout=120)
        start.wait()
        results[index] = ask(own_client, messages, stream=stream)

    threads = [threading.Thread(target=run, args=(0, CHAT, False)),
               threading.Thread(target=run, args=(1, OTHER_CHAT, True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == sequential


def test_client_disconnect_mid_stream(port, client, model):
    expected = ask(client, OTHER_CHAT)
    stream = client.completions.create(model="gemma3", prompt=COUNTING, max_tokens=400, temperature=0, stream=True)
    received = 0
    for chunk in stream:
        received += len(chunk.choices[0].text)
        if received >= 3:
            break
    stream.close()
    wait_until_idle(port)
    # 400 tokens take several seconds here; a disconnect stops the generation after a few.
    assert model.last_stats.completion_tokens < 100
    assert ask(client, OTHER_CHAT) == expected


def test_bad_requests_get_400(client):
    cases = [
        dict(messages=[{"role": "assistant", "content": "Hi"}]),
        dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]),
        dict(messages=CHAT, n=2),
        dict(messages=CHAT, temperature=-1),
        dict(messages=CHAT, top_logprobs=3),
    ]
    for case in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="gemma3", max_tokens=2, **case)
        assert raised.value.status_code == 400
        assert raised.value.body["type"] == "invalid_request_error"
        assert raised.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="vision tower"):
        client.chat.completions.create(model="gemma3", max_tokens=2, **cases[1])


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/chat/completions", b"{not json", "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", "JSON object"),
    ("/v1/chat/completions", b"{}", "'messages' is missing"),
    ("/v1/chat/completions", json.dumps({"messages": CHAT, "temperature": "hot"}).encode(), "'temperature' must be a number"),
    ("/v1/chat/completions", json.dumps({"messages": CHAT, "stream": "yes"}).encode(), "'stream' must be true or false"),
    ("/v1/completions", json.dumps({"prompt": ["a", "b"]}).encode(), "'prompt' must be"),
    ("/v1/completions", json.dumps({"prompt": "a", "echo": True}).encode(), "'echo'"),
])
def test_malformed_request_errors(port, path, body, fragment):
    status, response = raw_request(port, "POST", path, body)
    assert status == 400
    assert set(response["error"]) == {"message", "type", "param", "code"}
    assert fragment in response["error"]["message"]


def test_unknown_path_is_json_404(port):
    status, response = raw_request(port, "GET", "/v1/nothing")
    assert status == 404
    assert "error" in response


def test_queue_full_gets_503(model):
    with running_server(create_app(model, max_pending=1)) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        stream = client.completions.create(model="gemma3", prompt=COUNTING, max_tokens=400, temperature=0, stream=True)
        next(iter(stream))  # the first request is generating
        with pytest.raises(openai.APIStatusError) as raised:
            client.completions.create(model="gemma3", prompt=COUNTING, max_tokens=2)
        assert raised.value.status_code == 503
        stream.close()
        wait_until_idle(port)
        assert client.completions.create(model="gemma3", prompt=COUNTING, max_tokens=2, temperature=0).choices[0].text
