#!/usr/bin/env python3
"""Soak test: a long chat session with resident memory sampled per turn, then an HTTP server
serving a few hundred requests from several clients at once.

Chat phase: multi-turn chats on one Model until --tokens completion tokens are generated (a
conversation restarts when it would no longer fit in n_ctx). Resident memory (VmRSS) is read
after every turn; the figures use the samples after --warmup-tokens, when the KV cache, scratch
buffers and allocator pools have reached their steady size. The greedy reply to a fixed prompt
is taken before and after the phase and must be unchanged.

Server phase: `gemma3-edge serve` runs in a subprocess on 127.0.0.1. --requests requests (chat
and completions, streamed or not, temperature 0) are sent by --clients threads at once. Every
answer is compared with a sequential reference computed here through the Python API. Every
25th request is a long streamed generation whose client disconnects after the first chunk; the
requests after it must still be answered correctly.

Not part of `pytest`; it takes 10 to 20 minutes on 2 cores. Prints a JSON report and, with
--markdown, the lines docs/reliability.md quotes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import gemma3_edge
from gemma3_edge import chat

USER_TURNS = [
    "Tell me about the history of the bicycle.",
    "Why is the sky blue? Explain it to a child.",
    "Write a short poem about autumn rain.",
    "List five uses for a paperclip.",
    "What should I pack for a week of hiking?",
    "Explain what a hash table is.",
    "Describe the taste of a lemon to someone who has never had one.",
    "Summarise the plot of a detective story you invent.",
    "What are the pros and cons of working from home?",
    "Give me a recipe that uses rice and beans.",
]
CHECK_PROMPT = [{"role": "user", "content": "Name the planets of the solar system."}]
DISCONNECT_EVERY = 25  # every 25th server request is a stream its client abandons


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def greedy_reply(model: gemma3_edge.Model, messages: list[dict], max_tokens: int = 40) -> str:
    reply = model.create_chat_completion(messages, max_tokens=max_tokens, temperature=0)
    return reply["choices"][0]["message"]["content"]


# Chat phase -----------------------------------------------------------------------------------


def chat_soak(model: gemma3_edge.Model, total_tokens: int, warmup_tokens: int, max_tokens: int) -> dict:
    check_before = greedy_reply(model, CHECK_PROMPT)
    messages: list[dict] = []
    samples = []  # (tokens generated so far, rss bytes)
    generated = 0
    turns = 0
    conversations = 1
    started = time.perf_counter()
    while generated < total_tokens:
        user = {"role": "user", "content": USER_TURNS[turns % len(USER_TURNS)]}
        candidate = messages + [user]
        prompt_tokens = len(chat.chat_token_ids(model, candidate))
        if prompt_tokens + max_tokens >= model.n_ctx:
            messages = []
            conversations += 1
            candidate = [user]
        reply = model.create_chat_completion(candidate, max_tokens=max_tokens, temperature=0.8, seed=turns)
        content = reply["choices"][0]["message"]["content"]
        generated += reply["usage"]["completion_tokens"]
        messages = candidate + [{"role": "assistant", "content": content}]
        turns += 1
        samples.append((generated, rss_bytes()))
        if turns % 20 == 0:
            print(f"chat: {generated} tokens, {turns} turns, RSS {samples[-1][1] / 2**20:.1f} MiB",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    check_after = greedy_reply(model, CHECK_PROMPT)

    steady = [(tokens, rss) for tokens, rss in samples if tokens >= warmup_tokens]
    x = np.array([tokens for tokens, _ in steady], dtype=np.float64)
    y = np.array([rss for _, rss in steady], dtype=np.float64)
    slope = float(np.polyfit(x, y, 1)[0]) if len(steady) >= 2 else float("nan")
    return {
        "completion_tokens": generated,
        "turns": turns,
        "conversations": conversations,
        "seconds": round(seconds, 1),
        "warmup_tokens": warmup_tokens,
        "rss_samples_after_warmup": len(steady),
        "rss_first_after_warmup_mib": round(steady[0][1] / 2**20, 2),
        "rss_last_mib": round(steady[-1][1] / 2**20, 2),
        "rss_max_mib": round(max(y) / 2**20, 2),
        "rss_min_after_warmup_mib": round(min(y) / 2**20, 2),
        "rss_slope_kib_per_1000_tokens": round(slope * 1000 / 1024, 2),
        "greedy_reply_unchanged": check_before == check_after,
    }


# Server phase ---------------------------------------------------------------------------------


def request_for(index: int) -> tuple[str, dict]:
    """Return the endpoint and body of request `index`, with distinct prompts so that a mixed-up
    response shows."""
    a, b = 3 + index % 17, 100 + index
    stream = index % 2 == 1
    if index % DISCONNECT_EVERY == DISCONNECT_EVERY - 1:
        return "/v1/completions", {"prompt": f"Count from {a} to 1000: {a},", "max_tokens": 400,
                                   "temperature": 0, "stream": True, "abandon": True}
    if index % 3 == 2:
        return "/v1/completions", {"prompt": f"Request {index}. {a} + {b} =", "max_tokens": 12,
                                   "temperature": 0, "stream": stream}
    return "/v1/chat/completions", {
        "messages": [{"role": "user", "content": f"Request {index}: what is {a} times {b}? Answer briefly."}],
        "max_tokens": 12, "temperature": 0, "stream": stream,
    }


def reference_answer(model: gemma3_edge.Model, path: str, body: dict) -> str:
    """Return the completion text from the Python API, starting from an empty cache."""
    model.logits([model.config["bos_id"]])  # empties the cache
    if path == "/v1/completions":
        result = model.create_completion(body["prompt"], max_tokens=body["max_tokens"], temperature=0)
        return result["choices"][0]["text"]
    result = model.create_chat_completion(body["messages"], max_tokens=body["max_tokens"], temperature=0)
    return result["choices"][0]["message"]["content"]


def post(port: int, path: str, body: dict, timeout: float = 300) -> str:
    """Send one request and return the completion text; an abandoned stream returns after one chunk."""
    abandon = body.pop("abandon", False)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {response.read()[:300]!r}")
        if not body.get("stream"):
            data = json.loads(response.read())
            choice = data["choices"][0]
            return choice["text"] if "text" in choice else choice["message"]["content"]
        text = []
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(f"{path}: stream error {chunk['error']}")
            choice = chunk["choices"][0]
            text.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
            if abandon:
                break
        return "".join(text)
    finally:
        connection.close()


def wait_for_server(port: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} during startup")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the server did not respond to /health within {seconds} s")


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def server_soak(model: gemma3_edge.Model, n_requests: int, n_clients: int, n_ctx: int, n_threads: int) -> dict:
    requests = [request_for(i) for i in range(n_requests)]
    started = time.perf_counter()
    references = {}
    for index, (path, body) in enumerate(requests):
        if not body.get("abandon"):
            references[index] = reference_answer(model, path, dict(body))
    reference_seconds = time.perf_counter() - started

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "gemma3_edge.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "-c", str(n_ctx), "-t", str(n_threads), "--max-pending", str(n_requests + n_clients),
               "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    answers: dict[int, str] = {}
    errors: dict[int, str] = {}
    rss = []
    try:
        wait_for_server(port, process)
        rss.append(process_rss_bytes(process.pid))
        next_index = [0]
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= n_requests:
                    return
                path, body = requests[index]
                try:
                    answers[index] = post(port, path, dict(body))
                except Exception as error:  # recorded per request and reported below
                    errors[index] = f"{type(error).__name__}: {error}"
                if index % 50 == 0:
                    rss.append(process_rss_bytes(process.pid))

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(n_clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        server_seconds = time.perf_counter() - started
        rss.append(process_rss_bytes(process.pid))
        # A request after everything else: the server must still answer correctly.
        final_path, final_body = requests[0]
        final_ok = post(port, final_path, dict(final_body)) == references[0]
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()

    checked = sorted(references)
    matched = [i for i in checked if answers.get(i) == references[i]]
    lost = [i for i in checked if i not in answers]
    by_text: dict[str, list[int]] = {}
    for i in checked:
        by_text.setdefault(references[i], []).append(i)
    mixed = [i for i in checked if i in answers and answers[i] != references[i]
             and any(j != i for j in by_text.get(answers[i], []))]
    differing = [i for i in checked if i in answers and answers[i] != references[i] and i not in mixed]
    return {
        "requests": n_requests,
        "clients": n_clients,
        "abandoned_streams": n_requests - len(checked),
        "checked": len(checked),
        "matched_reference": len(matched),
        "lost": len(lost),
        "errors": {str(i): errors[i] for i in sorted(errors)[:10]},
        "mixed_up": len(mixed),
        "differing_not_mixed": {str(i): [answers[i], references[i]] for i in differing[:10]},
        "final_request_correct": final_ok,
        "server_seconds": round(server_seconds, 1),
        "reference_seconds": round(reference_seconds, 1),
        "server_rss_mib": [round(value / 2**20, 1) for value in rss],
        "server_stderr_tail": stderr[-2000:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20000, help="completion tokens in the chat phase (default: 20000)")
    parser.add_argument("--warmup-tokens", type=int, default=2000,
                        help="tokens before RSS samples count (default: 2000)")
    parser.add_argument("--turn-tokens", type=int, default=160, help="max_tokens of each chat turn (default: 160)")
    parser.add_argument("--requests", type=int, default=300, help="server requests (default: 300)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default: 4)")
    parser.add_argument("-c", "--ctx", type=int, default=2048, help="n_ctx for both phases (default: 2048)")
    parser.add_argument("-t", "--threads", type=int, default=2, help="model threads (default: 2)")
    parser.add_argument("--skip-chat", action="store_true", help="run only the server phase")
    parser.add_argument("--skip-server", action="store_true", help="run only the chat phase")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args()

    model = gemma3_edge.Model(n_ctx=args.ctx, n_threads=args.threads)
    report = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        "model": str(model.path.name),
        "rss_after_load_mib": round(rss_bytes() / 2**20, 2),
    }
    if not args.skip_chat:
        report["chat"] = chat_soak(model, args.tokens, args.warmup_tokens, args.turn_tokens)
    if not args.skip_server:
        report["server"] = server_soak(model, args.requests, args.clients, args.ctx, args.threads)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")

    failures = []
    if "chat" in report and not report["chat"]["greedy_reply_unchanged"]:
        failures.append("the greedy reply changed during the chat phase")
    if "server" in report:
        server = report["server"]
        if server["lost"] or server["mixed_up"] or server["errors"] or not server["final_request_correct"]:
            failures.append("server requests were lost, failed or mixed up")
    for failure in failures:
        print(f"soak: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
