"""One Model used from several threads gives the single-threaded results, and cancelled work
(a closed stream, Ctrl-C, a disconnected HTTP client) leaves it usable and correct."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import gemma3_edge
from gemma3_edge.server import create_app

N_CTX = 512
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at", "Once upon a time"]
CHATS = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What is ice made of?"}],
]
TOKEN_SEQUENCES = [[2, 818, 5279, 529, 7001, 563], [2, 3689, 563, 496, 4225]]
REFERENCE_PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def model(default_model_file):
    return gemma3_edge.Model(default_model_file, n_ctx=N_CTX, n_threads=2)


def chat_result(completion: dict) -> tuple:
    choice = completion["choices"][0]
    return choice["message"]["content"], choice["finish_reason"], completion["usage"]


def jobs():
    """(kind, argument) pairs covering generate, logits and chat."""
    return ([("generate", p) for p in PROMPTS] + [("logits", ids) for ids in TOKEN_SEQUENCES]
            + [("chat", i) for i in range(len(CHATS))])


def run_job(model, kind, argument):
    if kind == "generate":
        return model.generate(argument, max_tokens=10, temperature=0)
    if kind == "logits":
        return model.logits(argument)
    # Only the text: usage and finish_reason with another thread waiting are tested below.
    return chat_result(model.create_chat_completion(CHATS[argument], max_tokens=10, temperature=0))[0]


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    return a == b


def test_threads_match_single_threaded(model):
    reference = {(kind, str(arg)): run_job(model, kind, arg) for kind, arg in jobs()}
    work = jobs()
    rng = np.random.default_rng(3)

    def worker(seed):
        order = list(work)
        np.random.default_rng(seed).shuffle(order)
        return [((kind, str(arg)), run_job(model, kind, arg)) for kind, arg in order]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(worker, int(seed)) for seed in rng.integers(0, 1000, size=4)]
        results = [item for future in futures for item in future.result(timeout=600)]
    assert len(results) == 4 * len(work)
    for key, value in results:
        assert same(value, reference[key]), f"{key}: threaded result {value!r} differs from {reference[key]!r}"


def test_stream_closed_early_leaves_model_usable(model):
    reference = model.generate(REFERENCE_PROMPT, max_tokens=8, temperature=0)
    for _ in range(3):
        stream = model.generate("Count from 1 to 100: 1, 2,", max_tokens=200, temperature=0, stream=True)
        received = [next(stream) for _ in range(3)]
        stream.close()
        assert all(isinstance(piece, str) for piece in received)
        assert model.last_stats.completion_tokens < 200
    # An abandoned stream that never started keeps no lock either.
    unused = model.generate("Hello", max_tokens=5, stream=True)
    del unused
    assert model.generate(REFERENCE_PROMPT, max_tokens=8, temperature=0) == reference


class ContendedLock:
    """Wraps a Model's lock and sets contended when a thread finds it held and waits for it."""

    def __init__(self, lock) -> None:
        self.lock = lock
        self.contended = threading.Event()

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.contended.set()
            self.lock.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.lock.release()


class StartWaiterOnSecondCheck(threading.Event):
    """A cancel_event that is never set. At its second check, after the first piece (while the
    generation holds the model's lock), it starts a generate() on another thread and returns
    once that call waits for the lock."""

    def __init__(self, model, lock: ContendedLock) -> None:
        super().__init__()
        self.model = model
        self.lock = lock
        self.checks = 0
        self.waiter = None

    def is_set(self) -> bool:
        self.checks += 1
        if self.checks == 2:
            self.waiter = start_waiter(self.model, self.lock)
        return False


def start_waiter(model, lock: ContendedLock) -> threading.Thread:
    waiter = threading.Thread(target=model.generate, args=("Hello",), kwargs={"max_tokens": 3, "temperature": 0})
    waiter.start()
    assert lock.contended.wait(timeout=60), "the other thread's generate() never waited for the model's lock"
    return waiter


@pytest.fixture
def watched_lock(model):
    lock = ContendedLock(model._lock)
    model._lock = lock
    yield lock
    model._lock = lock.lock


def test_chat_usage_with_another_thread_waiting(model, watched_lock):
    expected = model.create_chat_completion(CHATS[0], max_tokens=10, temperature=0)
    event = StartWaiterOnSecondCheck(model, watched_lock)
    completion = model.create_chat_completion(CHATS[0], max_tokens=10, temperature=0, cancel_event=event)
    assert event.waiter is not None, "the generation ended before its second piece"
    event.waiter.join(timeout=120)
    text, finish_reason, usage = chat_result(completion)
    expected_text, expected_finish_reason, expected_usage = chat_result(expected)
    assert text == expected_text
    assert finish_reason == expected_finish_reason
    assert usage == expected_usage


def test_chat_stream_with_another_thread_waiting(model, watched_lock):
    expected = chat_result(model.create_chat_completion(CHATS[0], max_tokens=10, temperature=0))
    chunks = model.create_chat_completion(CHATS[0], max_tokens=10, temperature=0, stream=True)
    received = [next(chunks), next(chunks)]  # the generation now holds the model's lock
    waiter = start_waiter(model, watched_lock)
    received += list(chunks)
    waiter.join(timeout=120)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in received)
    assert text == expected[0]
    assert received[-1]["choices"][0]["finish_reason"] == expected[1]


def test_stream_consumed_across_threads(default_model_file):
    # A model of its own: a leaked lock would block every later test that used a shared one.
    model = gemma3_edge.Model(default_model_file, n_ctx=N_CTX, n_threads=2)
    reference = model.generate(REFERENCE_PROMPT, max_tokens=8, temperature=0)
    stream = model.generate("Count: 1, 2,", max_tokens=50, temperature=0, stream=True)
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        other.submit(next, stream).result(timeout=60)
    next(stream)
    try:
        stream.close()
    finally:
        # A leaked lock shows as a call that never returns; a daemon thread does not hold up exit.
        answers = []
        later = threading.Thread(target=lambda: answers.append(
            model.generate(REFERENCE_PROMPT, max_tokens=8, temperature=0)), daemon=True)
        later.start()
        later.join(timeout=60)
    assert answers == [reference]


INTERRUPT_SCRIPT = r"""
import _thread, json, sys, threading
import gemma3_edge

model = gemma3_edge.Model(n_ctx=512, n_threads=2)
prompt = "The capital of France is"
reference = model.generate(prompt, max_tokens=8, temperature=0)
outcomes = []
for method in ["signal", "interrupt_main"]:
    pieces = 0
    try:
        for piece in model.generate("Count from 1 to 500: 1, 2,", max_tokens=400, temperature=0, stream=True):
            pieces += 1
            if pieces == 3:
                if method == "signal":
                    print("STARTED", flush=True)  # the parent sends SIGINT now
                else:
                    threading.Timer(0.05, _thread.interrupt_main).start()
        outcomes.append({"method": method, "interrupted": False})
    except KeyboardInterrupt:
        outcomes.append({"method": method, "interrupted": True, "completion_tokens": model.last_stats.completion_tokens,
                         "after": model.generate(prompt, max_tokens=8, temperature=0)})
print(json.dumps({"reference": reference, "outcomes": outcomes}), flush=True)
"""


def test_keyboard_interrupt_mid_generation(tmp_path):
    # Runs in a subprocess: a KeyboardInterrupt that reached pytest itself would end the session.
    process = subprocess.Popen([sys.executable, "-c", INTERRUPT_SCRIPT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == "STARTED", f"the child did not start generating: {line!r} {process.stderr.read()}"
        process.send_signal(signal.SIGINT)
        output, errors = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, errors
    report = json.loads(output.strip().splitlines()[-1])
    for outcome in report["outcomes"]:
        assert outcome["interrupted"], f"{outcome['method']}: the generation was not interrupted"
        # 400 tokens take tens of seconds here; the interrupt stops the loop after a few.
        assert outcome["completion_tokens"] < 400
        assert outcome["after"] == report["reference"], f"{outcome['method']}: wrong answer after the interrupt"


# Server -----------------------------------------------------------------------------------------


def post(port: int, path: str, body: dict, timeout: float = 120) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def pending_requests(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())["pending_requests"]
    finally:
        connection.close()


def open_stream(port: int, body: dict) -> socket.socket:
    """Send a streaming request on a raw socket and return it once the first event arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = json.dumps({**body, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the stream before the first event"
        received += chunk
    return sock


def test_server_client_disconnects(model):
    import uvicorn

    chat_body = {"messages": CHATS[1], "max_tokens": 10, "temperature": 0}
    expected = chat_result(model.create_chat_completion(CHATS[1], max_tokens=10, temperature=0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.02)
        long_request = {"prompt": "Count from 1 to 1000: 1, 2,", "max_tokens": 480, "temperature": 0}

        # A client that disconnects mid-stream.
        open_stream(port, long_request).close()
        # A client that disconnects while its request waits behind another generation.
        running = open_stream(port, long_request)
        waiting = socket.create_connection(("127.0.0.1", port), timeout=60)
        data = json.dumps(chat_body).encode()
        waiting.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        time.sleep(0.5)
        waiting.close()
        running.close()

        deadline = time.monotonic() + 120
        while pending_requests(port) != 0:
            assert time.monotonic() < deadline, "requests were still pending 120 s after their clients left"
            time.sleep(0.1)
        # Each abandoned stream stopped before its max_tokens. The bound is the request's own
        # limit, not a token count: how many tokens come out before the disconnect is noticed
        # depends on the runtime's speed (about 100 at 150 tokens/s).
        assert model.last_stats.completion_tokens < long_request["max_tokens"]
        status, body = post(port, "/v1/chat/completions", chat_body)
        assert status == 200, body
        assert chat_result(json.loads(body)) == expected
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
    assert model.generate(REFERENCE_PROMPT, max_tokens=8, temperature=0) == \
        gemma3_edge.Model(model.path, n_ctx=N_CTX, n_threads=2).generate(REFERENCE_PROMPT, max_tokens=8, temperature=0)
