"""OpenAI-compatible HTTP server (gemma3-edge serve), on Starlette and uvicorn.

Endpoints: POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with
"stream": true), GET /v1/models and /health. One model runs one generation at a time: requests
wait in arrival order on a single worker thread. A generation stops after the current token when
its client disconnects. Bad requests get HTTP 400 with an OpenAI error object:
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gemma3_edge import chat
from gemma3_edge.model import Model

logger = logging.getLogger("gemma3_edge.server")

SAMPLING_NUMBERS = ("temperature", "top_p", "min_p", "repeat_penalty")
SAMPLING_INTEGERS = ("top_k", "seed")


class RequestError(Exception):
    """A request the server rejects, with its HTTP status and OpenAI error fields."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# Request parsing ------------------------------------------------------------------------------


def _number(data: dict, name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{name}' must be a number, got {json.dumps(value)}", param=name)
    return float(value)


def _integer(data: dict, name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer, got {json.dumps(value)}", param=name)
    return value


def _boolean(data: dict, name: str, default: bool = False) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false, got {json.dumps(value)}", param=name)
    return value


def _reject_unsupported(data: dict) -> None:
    """Reject OpenAI options this server does not implement, unless they have their neutral value."""
    if data.get("n", 1) != 1:
        raise RequestError(f"'n' must be 1 (one choice per request), got {json.dumps(data['n'])}", param="n")
    if data.get("best_of", 1) != 1:
        raise RequestError("'best_of' must be 1", param="best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if data.get(name, 0) not in (0, None):
            raise RequestError(f"'{name}' is not supported; use 'repeat_penalty' instead", param=name)
    for name in ("tools", "functions", "logit_bias"):
        if data.get(name):
            raise RequestError(f"'{name}' is not supported by this server", param=name)
    if data.get("echo"):
        raise RequestError("'echo' is not supported", param="echo")
    if data.get("suffix"):
        raise RequestError("'suffix' is not supported", param="suffix")
    response_format = data.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise RequestError("only response_format {\"type\": \"text\"} is supported", param="response_format")


def _reject_image_paths(messages) -> None:
    """Raise RequestError for an image part that is not a base64 data URL.

    The Python API also opens local files, but a server must not read its own disk for a
    client, nor tell it which files exist.
    """
    if not isinstance(messages, list):
        return  # chat.create_chat_completion reports the type
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in chat.IMAGE_PART_TYPES:
                continue
            value = part.get("image_url") if part["type"] == "image_url" else next(
                (part[key] for key in ("image", "url", "path") if part.get(key) is not None), None)
            source = value.get("url") if isinstance(value, dict) else value
            if not (isinstance(source, str) and source.startswith("data:")):
                raise RequestError(f"messages[{i}].content[{j}]: the server takes images only as base64 data URLs "
                                   "(data:image/png;base64,...); file paths and remote URLs are not read",
                                   param="messages")


def _sampling_arguments(data: dict) -> dict:
    _reject_unsupported(data)
    arguments: dict[str, Any] = {}
    max_tokens = _integer(data, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _integer(data, "max_tokens")
    if max_tokens is not None:
        arguments["max_tokens"] = max_tokens
    for name in SAMPLING_NUMBERS:
        value = _number(data, name)
        if value is not None:
            arguments[name] = value
    for name in SAMPLING_INTEGERS:
        value = _integer(data, name)
        if value is not None:
            arguments[name] = value
    stop = data.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError("'stop' must be a string or a list of strings", param="stop")
        arguments["stop"] = stop
    arguments["parse_special"] = _boolean(data, "parse_special")
    return arguments


def _include_usage(data: dict) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    return _boolean(options, "include_usage")


def _completion_prompt(data: dict) -> str | list[int]:
    if "prompt" not in data:
        raise RequestError("'prompt' is missing; give a string or a list of token ids", param="prompt")
    prompt = data["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise RequestError(
        "'prompt' must be a string, a list of one string or a non-empty list of token ids "
        "(several prompts in one request are not supported)", param="prompt",
    )


# Application ----------------------------------------------------------------------------------


class _Server:
    def __init__(self, model: Model, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.model = model
        self.model_id = chat.model_id(model)
        self.created = int(time.time())
        self.max_pending = max_pending
        self.pending = 0  # requests submitted to the worker and not finished; changed on the event loop only
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma3-edge-generation")
        self.active: set[threading.Event] = set()  # cancel events of the requests in flight

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id, "pending_requests": self.pending})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "gemma3-edge"},
        ]})

    async def chat_completions(self, request: Request) -> Response:
        data = await _read_json(request)
        messages = data.get("messages")
        if messages is None:
            raise RequestError("'messages' is missing; give a list of {role, content} objects", param="messages")
        _reject_image_paths(messages)
        arguments = _sampling_arguments(data)
        logprobs = _boolean(data, "logprobs")
        top_logprobs = _integer(data, "top_logprobs")
        arguments.update(logprobs=logprobs, top_logprobs=top_logprobs or 0)
        stream = _boolean(data, "stream")

        def start(cancel: threading.Event):
            return chat.create_chat_completion(self.model, messages, stream=stream, cancel_event=cancel, **arguments)

        return await self._respond(request, start, stream, _include_usage(data))

    async def completions(self, request: Request) -> Response:
        data = await _read_json(request)
        prompt = _completion_prompt(data)
        arguments = _sampling_arguments(data)
        arguments["logprobs"] = _integer(data, "logprobs")
        stream = _boolean(data, "stream")

        def start(cancel: threading.Event):
            return chat.create_completion(self.model, prompt, stream=stream, cancel_event=cancel, **arguments)

        return await self._respond(request, start, stream, _include_usage(data))

    async def _respond(self, request: Request, start: Callable, stream: bool, include_usage: bool) -> Response:
        if self.pending >= self.max_pending:
            raise RequestError(f"the server is busy: {self.pending} requests are waiting; retry later",
                               status=503, code="queue_full", kind="server_error")
        cancel = threading.Event()
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def put(kind: str, item: Any = None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, item))

        def work() -> None:
            # Runs on the worker thread, one request at a time.
            if cancel.is_set():
                put("cancelled")
                return
            try:
                result = start(cancel)
            except ValueError as error:
                put("invalid", error)
                return
            except Exception as error:
                logger.exception("%s: generation failed to start", request.url.path)
                put("failed", error)
                return
            if not stream:
                put("result", result)
                return
            try:
                for chunk in result:
                    put("chunk", chunk)
            except Exception as error:
                logger.exception("%s: generation failed while streaming", request.url.path)
                put("failed", error)
            finally:
                result.close()
            put("end", self._usage())

        self.pending += 1
        self.active.add(cancel)
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        future = loop.run_in_executor(self.worker, work)
        future.add_done_callback(lambda _: self._finish(cancel))
        started = time.perf_counter()
        streaming = False
        try:
            kind, item = await events.get()
            if kind == "invalid":
                message = str(item)
                raise RequestError(message, param="messages" if message.startswith("messages") else None)
            if kind == "failed":
                raise RequestError(f"generation failed: {item}", status=500, kind="server_error")
            if kind == "cancelled":
                logger.info("%s: client disconnected while waiting; request dropped", request.url.path)
                return Response(status_code=499)
            if kind == "result":
                self._log(request, item["id"], item["usage"], item["choices"][0]["finish_reason"], started)
                return JSONResponse(item)
            streaming = True
            return StreamingResponse(self._events(request, kind, item, events, cancel, watcher, include_usage, started),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        finally:
            if not streaming:
                watcher.cancel()

    async def _events(self, request: Request, kind: str, item: Any, events: asyncio.Queue, cancel: threading.Event,
                      watcher: asyncio.Task, include_usage: bool, started: float):
        """Server-sent events: one "data: {chunk}" per chunk, then "data: [DONE]"."""
        last = item
        try:
            while kind == "chunk":
                last = item
                yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
                kind, item = await events.get()
            if kind == "failed":
                error = {"error": {"message": f"generation failed: {item}", "type": "server_error", "param": None,
                                   "code": None}}
                yield f"data: {json.dumps(error)}\n\n"
                return
            usage = item
            if include_usage:
                # As OpenAI sends it with stream_options.include_usage: a last chunk with no choices.
                usage_chunk = {key: last[key] for key in ("id", "object", "created", "model")}
                usage_chunk.update(choices=[], usage=usage)
                yield f"data: {json.dumps(usage_chunk)}\n\n"
            yield "data: [DONE]\n\n"
            self._log(request, last["id"], usage, last["choices"][0]["finish_reason"], started)
        finally:
            if not (kind == "end" or kind == "failed"):
                logger.info("%s %s: client disconnected; generation stopped", request.url.path, last.get("id"))
            cancel.set()
            watcher.cancel()

    def _usage(self) -> dict:
        stats = self.model.last_stats
        return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
                "total_tokens": stats.prompt_tokens + stats.completion_tokens}

    def _finish(self, cancel: threading.Event) -> None:
        self.pending -= 1
        self.active.discard(cancel)

    def _log(self, request: Request, request_id: str, usage: dict, finish_reason: str, started: float) -> None:
        stats = self.model.last_stats
        logger.info("%s %s: %d prompt tokens (%d from the cache), %d completion tokens, finish %s, %.2f s",
                    request.url.path, request_id, usage["prompt_tokens"], stats.cached_prompt_tokens,
                    usage["completion_tokens"], finish_reason, time.perf_counter() - started)

    @asynccontextmanager
    async def lifespan(self, app: Starlette):
        logger.info("serving %s", self.model_id)
        yield
        for cancel in list(self.active):
            cancel.set()
        self.worker.shutdown(wait=True, cancel_futures=True)
        logger.info("stopped")


async def _read_json(request: Request) -> dict:
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"request body is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise RequestError(f"request body must be a JSON object, got {type(data).__name__}")
    return data


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    # The body has been read, so the next message uvicorn delivers is http.disconnect (it also
    # sends one when the response is complete, which is harmless: the generation has ended).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


async def _request_error(request: Request, error: RequestError) -> Response:
    log = logger.warning if error.status < 500 else logger.error
    log("%s %s: HTTP %d: %s", request.method, request.url.path, error.status, error.message)
    return error.response()


async def _http_error(request: Request, error: HTTPException) -> Response:
    logger.warning("%s %s: HTTP %d", request.method, request.url.path, error.status_code)
    return RequestError(f"{request.method} {request.url.path}: {error.detail}", status=error.status_code).response()


async def _unexpected_error(request: Request, error: Exception) -> Response:
    logger.exception("%s %s failed", request.method, request.url.path)
    return RequestError(f"internal error: {error}", status=500, kind="server_error").response()


def create_app(model: Model, max_pending: int = 64) -> Starlette:
    """Build the ASGI application serving model; max_pending requests may wait (more get HTTP 503)."""
    server = _Server(model, max_pending)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
    ]
    handlers = {RequestError: _request_error, HTTPException: _http_error, Exception: _unexpected_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=server.lifespan)
    app.state.server = server
    return app


def serve(model: Model, host: str = "127.0.0.1", port: int = 8080, max_pending: int = 64,
          log_level: str = "info") -> None:
    """Serve model over HTTP until interrupted (Ctrl-C or SIGTERM)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(model, max_pending)
    logger.info("listening on http://%s:%d/v1", host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
