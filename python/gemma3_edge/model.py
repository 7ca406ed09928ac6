"""The Python face of the runtime: load a Gemma 3 GGUF file, tokenize, score and generate."""

from __future__ import annotations

import json
import math
import numbers
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from gemma3_edge import _core
from gemma3_edge._default_model import default_model_path
from gemma3_edge.vision import MultimodalPrompt

ModelLoadError = _core.ModelLoadError

PRECISIONS = ("quantized", "f32")
KV_TYPES = ("f32", "f16", "int8")
_INT32_MAX = 2**31 - 1  # the sampler's top_k is a C++ int32_t


def kv_bytes_per_value(kv_type: str) -> float:
    """Bytes per cached key or value element: int8 stores blocks of 32 with a float32 scale."""
    sizes = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "int8": 1.0 + 4.0 / 32}
    if kv_type not in sizes:
        raise ValueError(f"kv_type must be one of {tuple(sizes)}, got {kv_type!r}")
    return sizes[kv_type]


def kv_cache_bytes_for_config(config: dict, n_ctx: int, kv_type: str, all_layers_full: bool = False) -> int:
    """KV cache bytes at n_ctx positions for a model configuration.

    Global layers keep every position; sliding layers keep a ring of the window only (the
    runtime's layout). all_layers_full=True counts every layer at full length instead, as the
    Gemma 3 report's Table 3 does. "bf16" is accepted for that comparison.
    """
    per_position = 2 * config["n_kv_heads"] * config["head_dim"] * kv_bytes_per_value(kv_type)
    positions = 0
    for layer_type in config["layer_types"]:
        full = all_layers_full or layer_type == "global"
        positions += n_ctx if full else min(n_ctx, config["sliding_window"])
    return int(positions * per_position)


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_number(name: str, value: object) -> float:
    """Return value as a float. The sampler checks its range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} ({value!r})")
    return bool(value)


@dataclass
class GenerationStats:
    """Token counts, finish reason and timings of the last generate() call."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens reused from the cache, not recomputed
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop" (EOS, <end_of_turn> or a stop string) or "length"
    prompt_seconds: float = 0.0
    completion_seconds: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    # With generate(logprobs=N): per completion token (id, log-probability, [(id, log-probability)]
    # of the N most likely tokens), from the model's log-softmax before any sampling transform.
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] | None = None
    # Images in the prompt: seconds spent encoding them (preprocessing included), and how many
    # images or crops were encoded and how many came from the image cache.
    image_seconds: float = 0.0
    images_encoded: int = 0
    images_cached: int = 0

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def completion_tokens_per_second(self) -> float:
        # The first completion token comes from the prefill logits, so rate the decoded ones.
        decoded = max(0, self.completion_tokens - 1)
        return decoded / self.completion_seconds if self.completion_seconds > 0 else 0.0


class Model:
    """A Gemma 3 model loaded from a GGUF file, with one evaluation context.

    path=None loads the default model (Gemma 3 270M Q4_K_M). precision="f32" dequantizes every
    weight to float32 (the reference path); "quantized" runs the stored formats. One Model may
    be shared between threads: calls are serialised by a lock.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        precision: str = "quantized",
        kv_type: str = "f32",
        verbose: bool = False,
        mmproj: str | os.PathLike | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {KV_TYPES}, got {kv_type!r}")
        n_ctx = _check_int("n_ctx", n_ctx, 1)
        n_batch = _check_int("n_batch", n_batch, 1)
        n_threads = _default_threads() if n_threads is None else _check_int("n_threads", n_threads, 1)
        _core.set_log_level(1 if verbose else 2)

        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        self._model = _core.Model(str(self.path), precision)
        max_context = self._model.config["max_context"]
        if n_ctx > max_context:
            raise ValueError(
                f"n_ctx {n_ctx} exceeds the model's context length {max_context}; pass n_ctx <= {max_context}"
            )
        self._context = _core.Context(self._model, n_ctx, n_batch, n_threads, kv_type)
        # A plain Lock, not an RLock: a stream may be started on one thread and closed on another
        # (Starlette iterates streams in a thread pool), and no method takes the lock twice.
        self._lock = threading.Lock()
        self._cached_tokens: list[int] = []  # the tokens whose keys and values are in the context
        # Recent generated replies (stripped text -> token ids), so a chat prompt that quotes a reply
        # uses the tokens that were generated and keeps the cache, rather than a re-tokenization.
        self._reply_tokens: dict[str, list[int]] = {}
        self.last_stats = GenerationStats()
        # The vision tower (a llama.cpp mmproj file) for image input; None for text only.
        self._vision = None
        if mmproj is not None:
            from gemma3_edge.vision import VisionEncoder

            self._vision = VisionEncoder(mmproj, precision, n_threads)
            vision = self._vision.config
            if vision["projection_dim"] != self.config["d_model"]:
                raise ValueError(
                    f"{mmproj} projects images to width {vision['projection_dim']}, but {self.path.name} has "
                    f"d_model {self.config['d_model']}; use the vision file made for this model"
                )
            if self._context.n_batch < vision["n_tokens"]:
                raise ValueError(
                    f"n_batch {n_batch} is smaller than one image ({vision['n_tokens']} tokens), whose tokens "
                    f"must be evaluated together; pass n_batch >= {vision['n_tokens']}"
                )

    # Properties -------------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        return self._model.config

    @property
    def precision(self) -> str:
        return self._model.precision

    @property
    def n_ctx(self) -> int:
        return self._context.n_ctx

    @property
    def n_threads(self) -> int:
        return self._context.n_threads

    @property
    def n_vocab(self) -> int:
        return self.config["vocab_size"]

    @property
    def kv_bytes(self) -> int:
        return self._context.kv_bytes

    @property
    def kv_type(self) -> str:
        return self._context.kv_type

    def kv_cache_bytes(self, n_ctx: int, kv_type: str) -> int:
        """KV cache size for a context of n_ctx positions (see kv_cache_bytes_for_config)."""
        return kv_cache_bytes_for_config(self.config, n_ctx, kv_type)

    @property
    def has_vision(self) -> bool:
        """True when a vision tower (mmproj file) is loaded, so prompts may hold images."""
        return self._vision is not None

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        ids = [self.config["eos_id"]]
        if self.config["end_of_turn_id"] >= 0:
            ids.append(self.config["end_of_turn_id"])
        return tuple(ids)

    # Tokenizer --------------------------------------------------------------------------------

    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Encode text. special=True turns control tokens written in the text (e.g.
        "<start_of_turn>") into their ids; otherwise they are tokenized as plain text."""
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return self._model.tokenizer.encode(text, add_bos, special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Decode ids to text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.detokenize_bytes(ids).decode("utf-8", errors="replace")

    def detokenize_bytes(self, ids: Sequence[int]) -> bytes:
        return self._model.tokenizer.decode(self._check_token_ids("ids", ids))

    def _check_token_ids(self, name: str, ids: object, label: str = "token id") -> list[int]:
        """Return ids (the argument called name) as a list of ints inside the vocabulary."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise TypeError(f"{name} must be a sequence of token ids, got {type(ids).__name__}")
        checked = []
        for index, value in enumerate(ids):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{label} {value!r} at index {index} of {name} is a {type(value).__name__}, not an "
                                "integer; pass integer ids as tokenize() returns them")
            if not 0 <= value < self.n_vocab:
                raise ValueError(f"{label} {value} is outside the vocabulary (0..{self.n_vocab - 1})")
            checked.append(int(value))
        return checked

    # Scoring ----------------------------------------------------------------------------------

    def logits(self, token_ids: Sequence[int], start: int = 0) -> np.ndarray:
        """Teacher-forced logits from a fresh context, float32 [len(token_ids) - start, vocab]:
        the rows of positions start .. len(token_ids) - 1."""
        ids = self._check_token_ids("token_ids", token_ids)
        if not ids:
            raise ValueError("token_ids is empty")
        start = _check_int("start", start, 0)
        if start >= len(ids):
            raise ValueError(f"start must be in 0..{len(ids) - 1}, got {start}")
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens do not fit in n_ctx {self.n_ctx}; create the Model with a larger n_ctx")
        with self._lock:
            self._cached_tokens = []
            self._context.reset()
            return self._context.eval(ids, start)

    def next_logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits after the last of token_ids, float32 [vocab], reusing the longest cached prefix
        as generate() does. Returns what a cold evaluation of token_ids would return."""
        ids = self._check_token_ids("token_ids", token_ids)
        if not ids:
            raise ValueError("token_ids is empty")
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens do not fit in n_ctx {self.n_ctx}; create the Model with a larger n_ctx")
        with self._lock:
            reused = self._reuse_prefix(ids)
            self.last_stats = GenerationStats(prompt_tokens=len(ids), cached_prompt_tokens=reused)
            try:
                return self._context.eval(ids[reused:], -1)[0]
            finally:
                self._cached_tokens = ids[: self._context.n_past]

    # Session state ----------------------------------------------------------------------------

    _STATE_MAGIC = b"G3ES"
    _STATE_VERSION = 1

    def save_state(self, path: str | os.PathLike) -> None:
        """Write the cached tokens and their keys and values to path, so a long prompt (a system
        prompt, a document) is computed once. The file is written to a temporary name in the same
        folder and renamed, so an interrupted save never leaves a partial file at path."""
        path = Path(path)
        if any(token < 0 for token in self._cached_tokens):
            raise ValueError("the cache holds image tokens, which state files cannot store; save the state "
                             "of a text-only prompt")
        with self._lock:
            header = json.dumps({
                "tokens": self._cached_tokens,
                "model_file_size": self.path.stat().st_size,
                "model_name": self.config["name"],
                "kv_type": self.kv_type,
                "n_ctx": self.n_ctx,
            }).encode("utf-8")
            blob = self._context.save_state()
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._STATE_MAGIC + struct.pack("<IQ", self._STATE_VERSION, len(header)))
                f.write(header)
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_state(self, path: str | os.PathLike) -> list[int]:
        """Restore a state written by save_state() and return its tokens; the next generate()
        whose prompt starts with them computes only what follows."""
        path = Path(path)
        data = path.read_bytes()
        prefix = len(self._STATE_MAGIC) + 12
        if len(data) < prefix or data[:4] != self._STATE_MAGIC:
            raise ValueError(f"{path}: not a gemma3-edge state file")
        version, header_len = struct.unpack("<IQ", data[4:prefix])
        if version != self._STATE_VERSION:
            raise ValueError(f"{path}: state file version {version} is not supported (expected {self._STATE_VERSION})")
        if header_len > len(data) - prefix:
            raise ValueError(f"{path}: state file is truncated")
        try:
            header = json.loads(data[prefix : prefix + header_len])
            tokens = [int(t) for t in header["tokens"]]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: state file header is invalid ({error})") from error
        if header.get("model_file_size") != self.path.stat().st_size:
            raise ValueError(f"{path}: state was saved with another model file")
        with self._lock:
            self._cached_tokens = []
            try:
                self._context.load_state(data[prefix + header_len :])
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from error
            if self._context.n_past != len(tokens) or any(not 0 <= t < self.n_vocab for t in tokens):
                self._context.reset()
                raise ValueError(f"{path}: state tokens do not match its cache")
            self._cached_tokens = tokens
        return tokens

    def perplexity(self, text: str, n_ctx: int = 512, n_chunks: int | None = None) -> float:
        """Perplexity as llama.cpp's llama-perplexity computes it.

        The whole text is tokenized once with BOS and cut into chunks of n_ctx tokens; each chunk
        starts with BOS (replacing its first token) and only its second half is scored: the logits
        at positions n_ctx/2 .. n_ctx-2 predict the next token.
        """
        return self.perplexity_details(text, n_ctx, n_chunks)["perplexity"]

    def perplexity_details(self, text: str, n_ctx: int = 512, n_chunks: int | None = None) -> dict:
        n_ctx = _check_int("n_ctx", n_ctx, 4)
        if n_ctx > self.n_ctx:
            raise ValueError(f"perplexity n_ctx {n_ctx} exceeds the model's n_ctx {self.n_ctx}")
        tokens = self.tokenize(text, add_bos=True)
        available = len(tokens) // n_ctx
        if available == 0:
            raise ValueError(f"text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
        if n_chunks is None:
            n_chunks = available
        n_chunks = min(_check_int("n_chunks", n_chunks, 1), available)
        first = n_ctx // 2
        nll = 0.0
        count = 0
        bos = self.config["bos_id"]
        with self._lock:
            self._cached_tokens = []
            for chunk in range(n_chunks):
                ids = tokens[chunk * n_ctx : (chunk + 1) * n_ctx]
                ids[0] = bos
                self._context.reset()
                logits = self._context.eval(ids, first)  # rows for positions first .. n_ctx-1
                rows = logits[:-1].astype(np.float64)
                targets = np.asarray(ids[first + 1 :])
                top = rows.max(axis=1)
                log_z = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
                nll += float((log_z - rows[np.arange(len(targets)), targets]).sum())
                count += len(targets)
        return {"perplexity": math.exp(nll / count), "n_chunks": n_chunks, "n_scored": count, "n_tokens": len(tokens)}

    # Generation -------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        special: bool = False,
        logprobs: int | None = None,
        images: Sequence | None = None,
        pan_and_scan: bool | dict = False,
    ) -> str | Iterator[str]:
        """Generate a continuation of prompt (text, or token ids used as given).

        Stops at max_tokens (None: until the context is full), at the model's EOS or
        <end_of_turn>, or before the first stop string. temperature=0 is greedy. seed=None draws
        a random seed; a fixed seed gives the same text on every run. With stream=True, returns an
        iterator of text pieces; each piece is whole UTF-8 characters. self.last_stats has the
        token counts, finish reason and timings afterwards. logprobs=N (N >= 0) also records each
        completion token's log-probability and the N most likely alternatives in last_stats.logprobs.

        images (file paths, bytes, base64 data URLs or PIL images) need a model loaded with
        mmproj=; each "<start_of_image>" in a text prompt marks where the next image goes (none:
        all images at the start). pan_and_scan=True (or a dict of gemma3_edge.vision.PanAndScan
        options) adds crops of wide or tall images as transformers' Gemma 3 processor does.
        """
        stream = _check_bool("stream", stream)
        if images is not None:
            prompt = self.image_prompt(prompt, images, pan_and_scan=pan_and_scan, special=special)
        pieces, _ = self._generate_with_stats(
            prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repeat_penalty=repeat_penalty, seed=seed, stop=stop, special=special, logprobs=logprobs,
        )
        if stream:
            return pieces
        return "".join(pieces)

    # Chat and OpenAI-style completions (implemented in gemma3_edge.chat) ---------------------

    def chat(self, messages: list[dict], *, parse_special: bool = False, **sampling) -> str:
        """Return the reply to messages ([{"role": "user", "content": ...}, ...]) in the Gemma 3
        chat format; sampling takes generate()'s options. Turns that extend the previous call's
        conversation reuse its cache."""
        from gemma3_edge import chat

        return chat.chat(self, messages, parse_special=parse_special, **sampling)

    def create_chat_completion(self, messages: list[dict], **kwargs) -> dict | Iterator[dict]:
        """OpenAI-style chat completion dict (or chunks with stream=True), as llama-cpp-python
        returns it; see gemma3_edge.chat.create_chat_completion for the options."""
        from gemma3_edge import chat

        return chat.create_chat_completion(self, messages, **kwargs)

    def create_completion(self, prompt: str | Sequence[int], **kwargs) -> dict | Iterator[dict]:
        """OpenAI-style text completion dict (or chunks with stream=True), as llama-cpp-python
        returns it; see gemma3_edge.chat.create_completion for the options."""
        from gemma3_edge import chat

        return chat.create_completion(self, prompt, **kwargs)

    def image_prompt(self, prompt: str, images: Sequence, pan_and_scan: bool | dict = False, special: bool = False):
        """Tokenize a text prompt with images and encode the images (see generate()); returns a
        gemma3_edge.vision.MultimodalPrompt that generate() takes as its prompt."""
        from gemma3_edge import vision

        if self._vision is None:
            raise ValueError(
                f"{self.path.name} was loaded without a vision tower, so it cannot take images; load the model's "
                "vision projector (mmproj GGUF) with --mmproj or Model(path, mmproj=...) (Gemma 3 270M and 1B are "
                "text-only)"
            )
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt with images must be text, got {type(prompt).__name__}")
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        options = vision.parse_pan_and_scan(pan_and_scan)
        segments, pixels = vision.split_prompt(prompt, images, self._vision, options)
        return vision.build_prompt(self, segments, pixels, special=special)

    def _prepare_prompt(self, prompt, special: bool) -> list[int]:
        if isinstance(prompt, MultimodalPrompt):
            ids = list(prompt.ids)  # tokenized already
        elif isinstance(prompt, (str, bytes)):
            ids = self.tokenize(prompt, add_bos=True, special=special)
        elif isinstance(prompt, (Sequence, np.ndarray)):
            ids = self._check_token_ids("prompt", prompt, label="prompt token id")
        else:
            raise TypeError(
                f"prompt must be text (str or bytes) or a sequence of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise ValueError("prompt is empty; pass text or at least one token id")
        if len(ids) >= self.n_ctx:
            raise ValueError(
                f"prompt has {len(ids)} tokens, which leaves no room to generate in n_ctx {self.n_ctx}; "
                "shorten the prompt or create the Model with a larger n_ctx"
            )
        return ids

    def _generate_with_stats(self, prompt, *, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop,
                             special=False, logprobs=None) -> tuple[Iterator[str], GenerationStats]:
        """Check generate()'s arguments and return (text pieces, stats).

        The pieces come from a generator that has not started yet, and stats is the
        GenerationStats object that it fills in. Callers that may share the model with other
        threads read stats, because last_stats belongs to whichever generation ran last.
        """
        if max_tokens is not None:
            max_tokens = _check_int("max_tokens", max_tokens, 1)
        if logprobs is not None:
            logprobs = min(_check_int("logprobs", logprobs, 0), self.n_vocab)
        special = _check_bool("special", special)
        stops = _normalise_stops(stop)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        seed = _check_int("seed", seed, 0) & 0xFFFFFFFFFFFFFFFF
        top_k = _check_int("top_k", top_k, 0)
        if top_k > _INT32_MAX:
            raise ValueError(f"top_k must be <= {_INT32_MAX}, got {top_k}; any top_k >= the vocabulary size "
                             f"({self.n_vocab}) keeps every token, as 0 does")
        sampler = _core.Sampler(
            temperature=_check_number("temperature", temperature), top_k=top_k,
            top_p=_check_number("top_p", top_p), min_p=_check_number("min_p", min_p),
            repeat_penalty=_check_number("repeat_penalty", repeat_penalty), seed=seed,
        )
        ids = self._prepare_prompt(prompt, special)
        multimodal = prompt if isinstance(prompt, MultimodalPrompt) else None

        stats = GenerationStats(prompt_tokens=len(ids))
        if multimodal is not None:
            stats.image_seconds = multimodal.encode_seconds
            stats.images_encoded = multimodal.images_encoded
            stats.images_cached = multimodal.images_cached
        if logprobs is not None:
            stats.logprobs = []
        # Validation happens above, before the generator starts, so bad arguments raise at the call.
        return self._run(ids, max_tokens, sampler, stops, stats, logprobs, multimodal), stats

    def _run(self, ids: list[int], max_tokens: int | None, sampler, stops: list[str], stats: GenerationStats,
             logprobs: int | None = None, multimodal=None) -> Iterator[str]:
        # The cache is matched on keys: ids, with image soft tokens standing for their image.
        keys = ids if multimodal is None else multimodal.keys
        with self._lock:
            # Set under the lock, so that a call waiting for the lock cannot replace the stats of
            # the generation that holds it.
            self.last_stats = stats
            context = self._context
            decoder = _core.StreamingDecoder(self._model.tokenizer)
            history = list(ids)
            stop_ids = self.stop_token_ids
            pending = ""  # text held back because it could be the start of a stop string
            limit = self.n_ctx - len(ids)
            if max_tokens is not None:
                limit = min(limit, max_tokens)

            started = time.perf_counter()
            try:
                reused = self._reuse_prefix(keys)
                inputs = {}
                if multimodal is not None:
                    reused = self._reuse_before_image(reused, multimodal)
                    inputs = multimodal.eval_inputs(reused, self.config["d_model"])
                stats.cached_prompt_tokens = reused
                logits = self._check_logits(context.eval(ids[reused:], -1, **inputs)[0], len(ids) - 1)
                stats.prompt_seconds = time.perf_counter() - started
                started = time.perf_counter()
                stats.finish_reason = "length"
                while stats.completion_tokens < limit:
                    token = sampler.sample(logits, history)
                    if token in stop_ids:
                        stats.finish_reason = "stop"
                        break
                    history.append(token)
                    stats.completion_tokens += 1
                    stats.token_ids.append(token)
                    if logprobs is not None:
                        stats.logprobs.append(_token_logprobs(logits, token, logprobs))
                    pending += decoder.push(token)
                    if stops:
                        cut = _find_stop(pending, stops)
                        if cut is not None:
                            pending = pending[:cut]
                            stats.finish_reason = "stop"
                            break
                        safe = _safe_prefix_length(pending, stops)
                        if safe:
                            yield pending[:safe]
                            pending = pending[safe:]
                    elif pending:
                        yield pending
                        pending = ""
                    if stats.completion_tokens >= limit:
                        break
                    logits = self._check_logits(context.eval([token], -1)[0], len(history) - 1)
            finally:
                # The cache contains the first n_past tokens of what was fed to it, however this
                # ended (a stop, an error, Ctrl-C, or the caller closing the stream early).
                self._cached_tokens = (keys + history[len(ids):])[: context.n_past]
                self._remember_reply(stats.token_ids)
            stats.completion_seconds = time.perf_counter() - started
            pending += decoder.flush()
            if stops:
                cut = _find_stop(pending, stops)
                if cut is not None:
                    pending = pending[:cut]
                    stats.finish_reason = "stop"
            if pending:
                yield pending


    def _check_logits(self, logits: np.ndarray, position: int) -> np.ndarray:
        """Return logits, or raise FloatingPointError when they contain NaN, because any token
        sampled from them would be meaningless."""
        if np.isnan(logits).any():
            raise FloatingPointError(
                f"{self.path.name} produced NaN logits at position {position}: the forward pass overflowed "
                "(weights that are finite but huge can make activations infinite), so no token can be sampled; "
                "check the model file or convert it again"
            )
        return logits

    _MAX_REMEMBERED_REPLIES = 32

    def _remember_reply(self, ids: list[int]) -> None:
        """Remember the ids of a generated reply under its stripped text (the chat template strips
        message content), without whitespace-only tokens at either end."""
        start, end = 0, len(ids)
        while start < end and not self.detokenize(ids[start : start + 1]).strip():
            start += 1
        while end > start and not self.detokenize(ids[end - 1 : end]).strip():
            end -= 1
        core = ids[start:end]
        text = self.detokenize(core)
        if not core or text != text.strip() or "\ufffd" in text:
            return
        self._reply_tokens.pop(text, None)
        self._reply_tokens[text] = core
        while len(self._reply_tokens) > self._MAX_REMEMBERED_REPLIES:
            self._reply_tokens.pop(next(iter(self._reply_tokens)))

    def reply_tokens(self, text: str) -> list[int] | None:
        """Token ids generated for a recent reply whose stripped text is text, or None."""
        ids = self._reply_tokens.get(text)  # one dict lookup: atomic, so no lock is needed
        return list(ids) if ids is not None else None

    def _reuse_before_image(self, reused: int, multimodal) -> int:
        """Move a reused prefix that would end inside an image's tokens back to the image's start."""
        limit = multimodal.reuse_limit(reused)
        if limit == reused:
            return reused
        if limit > 0 and self._context.truncate(limit):
            return limit
        self._context.reset()
        return 0

    def _reuse_prefix(self, ids: list[int]) -> int:
        """Keep the longest cached prefix of ids and return its length (0: start afresh).

        The last prompt token is always evaluated again, since its logits start the generation.
        """
        cached = self._cached_tokens
        limit = min(len(cached), len(ids) - 1)
        common = 0
        while common < limit and cached[common] == ids[common]:
            common += 1
        if common > 0 and self._context.truncate(common):
            return common
        self._context.reset()
        return 0


def _token_logprobs(logits: np.ndarray, token: int, n_top: int) -> tuple[int, float, list[tuple[int, float]]]:
    """Log-softmax of logits at token, and the n_top most likely tokens with theirs (best first)."""
    values = logits.astype(np.float64)
    top = values.max()
    log_z = top + math.log(np.exp(values - top).sum())
    alternatives = []
    if n_top > 0:
        best = np.argpartition(-values, n_top - 1)[:n_top]
        best = best[np.argsort(-values[best], kind="stable")]
        alternatives = [(int(i), float(values[i] - log_z)) for i in best]
    return int(token), float(values[token] - log_z), alternatives


def _normalise_stops(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    out = []
    for s in stop:
        if not isinstance(s, str):
            raise TypeError(f"each stop must be a string, got {type(s).__name__}")
        if s:
            out.append(s)
    return out


def _find_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops]
    positions = [p for p in positions if p >= 0]
    return min(positions) if positions else None


def _safe_prefix_length(text: str, stops: list[str]) -> int:
    """Length of the prefix of text that cannot be part of any stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold
