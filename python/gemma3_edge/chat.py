"""Gemma 3 chat formatting, and OpenAI-style chat and text completions on a Model.

The format is the one Gemma 3's Jinja chat template produces (the template that transformers'
Gemma 3 converter, convert_gemma3_weights.py, writes into tokenizer_config.json):

    <bos><start_of_turn>user
    SYSTEM

    USER<end_of_turn>
    <start_of_turn>model
    ANSWER<end_of_turn>
    <start_of_turn>model

Message content is stripped of surrounding whitespace, a system message is folded into the first
user turn, and "assistant" is written as "model". scripts/make_chat_template_goldens.py renders
the reference template, and tests/test_chat_template.py compares this renderer with it.

Token ids are built segment by segment: control tokens by id, and the text between two control
tokens (fixed template text and message content together) tokenized as one piece with
special=False, so text written in a message can never become <end_of_turn> or another control token.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    from gemma3_edge.model import Model

BOS_TOKEN = "<bos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
START_OF_IMAGE = "<start_of_image>"

ROLES = ("system", "user", "assistant", "model")
TEXT_PART_TYPES = ("text",)
IMAGE_PART_TYPES = ("image", "image_url")  # "image" is the template's part type, "image_url" OpenAI's
MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit for top_logprobs
CANCELLED = "cancelled"  # finish_reason of a generation stopped through cancel_event

CONVERSATION_FORMAT = "gemma3-edge-conversation"
CONVERSATION_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation. kind is "control" (a control token such as
    <start_of_turn>), "template" (fixed template text such as "user\\n") or "content" (message text)."""

    text: str
    kind: str


@dataclass(frozen=True)
class _Turn:
    role: str  # "user" or "model"
    content: str | list[dict]  # a string, or validated parts {"type": "text", "text": ...} / {"type": "image"}


# Validation -----------------------------------------------------------------------------------


def validate_messages(messages: Any) -> tuple[str | None, list[_Turn]]:
    """Check messages against the Gemma 3 template's rules and return (system text, turns).

    Raises ValueError naming the message at fault. This is stricter than the template, which
    renders a system message after the first message and roles other than system, user, assistant
    and model (formats the model was not trained on), and silently drops content parts of a type
    other than text and image.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} objects, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError("messages is empty; send at least one user message")

    system = None
    start = 0
    first_role = _message_role(messages[0], 0)
    if first_role == "system":
        system = _system_text(messages[0]["content"])
        start = 1
    if start == len(messages):
        raise ValueError("messages has only a system message; add a user message after it")

    turns = []
    for index in range(start, len(messages)):
        message = messages[index]
        role = _message_role(message, index)
        if role == "system":
            raise ValueError(
                f"messages[{index}] is a system message; only the first message may be a system message"
            )
        role = "model" if role == "assistant" else role
        expected = "user" if (index - start) % 2 == 0 else "model"
        if role != expected:
            raise ValueError(
                f"messages[{index}] has role {message['role']!r} but roles must alternate user/assistant/user/... "
                f"(after an optional first system message); expected {'user' if expected == 'user' else 'assistant'}"
            )
        turns.append(_Turn(role, _check_content(message.get("content"), index)))
    return system, turns


def _message_role(message: Any, index: int) -> str:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{index}] must be an object with 'role' and 'content', got {type(message).__name__}")
    if "role" not in message:
        raise ValueError(f"messages[{index}] has no 'role'; use one of {ROLES}")
    if "content" not in message:
        raise ValueError(f"messages[{index}] has no 'content'; give a string or a list of content parts")
    role = message["role"]
    if role not in ROLES:
        raise ValueError(f"messages[{index}] has role {role!r}; use one of {ROLES}")
    return role


def _system_text(content: Any) -> str:
    # The template takes a string as it is (not stripped), and of a list only content[0]['text'].
    if isinstance(content, str):
        return content
    if isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict) \
            and content[0].get("type") == "text" and isinstance(content[0].get("text"), str):
        return content[0]["text"]
    raise ValueError(
        "messages[0] (system) content must be a string or a list of one text part "
        "(the Gemma 3 template uses only the first part); join the text into one string"
    )


def _check_content(content: Any, index: int) -> str | list[dict]:
    if content is None:
        # transformers drops None-valued keys before rendering, so the template renders no content.
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(
            f"messages[{index}] content must be a string, a list of content parts or null, got {type(content).__name__}"
        )
    parts = []
    for number, part in enumerate(content):
        where = f"messages[{index}].content[{number}]"
        if not isinstance(part, dict) or "type" not in part:
            raise ValueError(f"{where} must be an object with a 'type' (text, image or image_url)")
        kind = part["type"]
        if kind in TEXT_PART_TYPES:
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{where} is a text part without a string 'text'")
            parts.append({"type": "text", "text": part["text"]})
        elif kind in IMAGE_PART_TYPES:
            parts.append({"type": "image", "source": _image_source(part, where)})
        else:
            raise ValueError(f"{where} has type {kind!r}; use text, image or image_url")
    return parts


def _image_source(part: dict, where: str) -> Any:
    """The image of a content part, or None when the part names none (enough for rendering):
    OpenAI's {"type": "image_url", "image_url": {"url": ...}} or transformers' {"type": "image",
    "image" | "url" | "path": ...}. A URL may be a base64 data URL or a local file path."""
    if part["type"] == "image_url":
        value = part.get("image_url")
        source = value.get("url") if isinstance(value, dict) else value
    else:
        source = next((part[key] for key in ("image", "url", "path") if part.get(key) is not None), None)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ValueError(f"{where} has a remote image URL; this runtime does not fetch URLs, so send the image "
                         "as a base64 data URL (data:image/png;base64,...) or a local file path")
    if isinstance(source, str) and source.startswith("file://"):
        source = source[len("file://"):]
    return source


# Rendering ------------------------------------------------------------------------------------


def render_segments(messages: Any, add_generation_prompt: bool = True) -> list[Segment]:
    """Render messages as the Gemma 3 chat template does, as a list of segments."""
    system, turns = validate_messages(messages)
    segments = [Segment(BOS_TOKEN, "control")]
    for number, turn in enumerate(turns):
        segments.append(Segment(START_OF_TURN, "control"))
        segments.append(Segment(turn.role + "\n", "template"))
        if number == 0 and system is not None:
            segments.append(Segment(system + "\n\n", "content"))
        if isinstance(turn.content, str):
            segments.append(Segment(turn.content.strip(), "content"))
        else:
            for part in turn.content:
                if part["type"] == "image":
                    segments.append(Segment(START_OF_IMAGE, "control"))
                else:
                    segments.append(Segment(part["text"].strip(), "content"))
        segments.append(Segment(END_OF_TURN, "control"))
        segments.append(Segment("\n", "template"))
    if add_generation_prompt:
        segments.append(Segment(START_OF_TURN, "control"))
        segments.append(Segment("model\n", "template"))
    return [segment for segment in segments if segment.text]


def render_chat(messages: Any, add_generation_prompt: bool = True) -> str:
    """Return the prompt text the Gemma 3 chat template renders for messages."""
    return "".join(segment.text for segment in render_segments(messages, add_generation_prompt))


def chat_token_ids(
    model: Model, messages: Any, add_generation_prompt: bool = True, parse_special: bool = False
) -> list[int]:
    """Tokenize messages in the Gemma 3 chat format.

    Control tokens of the format are added by id. Message text is tokenized with special=False
    unless parse_special=True, so "<end_of_turn>" written in a message stays plain text.
    Raises ValueError for image content; chat_prompt() takes images.
    """
    segments = render_segments(messages, add_generation_prompt)
    if any(segment.kind == "control" and segment.text == START_OF_IMAGE for segment in segments):
        raise ValueError("messages contain an image, which needs the vision tower: use chat_prompt() with a model "
                         "loaded with mmproj=, or send text content only")
    control_ids = {BOS_TOKEN: model.config["bos_id"]}
    ids: list[int] = []
    text = ""
    previous = None
    for segment in segments:
        after_model_header = previous is not None and previous.kind == "template" and previous.text == "model\n"
        previous = segment
        if segment.kind == "content" and after_model_header:
            # A reply this model generated keeps its generated tokens, so the cache holding them
            # is reused; "model\n" ends in a user-defined piece, so splitting there changes nothing.
            generated = model.reply_tokens(segment.text)
            if generated is not None:
                ids += model.tokenize(text, add_bos=False, special=parse_special) if text else []
                ids += generated
                text = ""
                continue
        if segment.kind != "control":
            text += segment.text
            continue
        if text:
            ids += model.tokenize(text, add_bos=False, special=parse_special)
            text = ""
        if segment.text not in control_ids:
            control_ids[segment.text] = _control_token_id(model, segment.text)
        ids.append(control_ids[segment.text])
    if text:
        ids += model.tokenize(text, add_bos=False, special=parse_special)
    return ids


def chat_prompt(model: Model, messages: Any, add_generation_prompt: bool = True, parse_special: bool = False,
                pan_and_scan: bool | dict = False):
    """Tokenize messages as chat_token_ids() does, with image parts encoded: returns token ids,
    or a gemma3_edge.vision.MultimodalPrompt when the messages hold images. Raises ValueError
    for images when the model has no vision tower."""
    segments = render_segments(messages, add_generation_prompt)
    if not any(segment.kind == "control" and segment.text == START_OF_IMAGE for segment in segments):
        return chat_token_ids(model, messages, add_generation_prompt, parse_special)
    if not model.has_vision:
        raise ValueError(
            f"messages contain an image, but {model.path.name} was loaded without a vision tower; load its "
            "vision projector (mmproj GGUF) with --mmproj or Model(path, mmproj=...) (Gemma 3 270M and 1B are "
            "text-only), or send text content only"
        )
    from gemma3_edge import vision

    options = vision.parse_pan_and_scan(pan_and_scan)
    _, turns = validate_messages(messages)
    sources = [part["source"] for turn in turns if isinstance(turn.content, list)
               for part in turn.content if part["type"] == "image"]
    expanded: list[vision.Segment] = []
    pixels: list = []
    images_seen = 0
    for segment in segments:
        if segment.kind != "control":
            expanded.append(vision.Segment("text", segment.text))
            continue
        if segment.text != START_OF_IMAGE:
            expanded.append(vision.Segment("control", segment.text))
            continue
        source = sources[images_seen]
        images_seen += 1
        if source is None:
            raise ValueError("an image content part has no image; give image_url.url (a data URL or file path) "
                             "or an 'image', 'url' or 'path' field")
        parts = model._vision.preprocess(source, options)
        expanded += vision.image_segments(len(pixels), len(parts) - 1)
        pixels += parts
    return vision.build_prompt(model, expanded, pixels, special=parse_special, add_bos=False)


def _control_token_id(model: Model, token: str) -> int:
    ids = model.tokenize(token, add_bos=False, special=True)
    if len(ids) != 1:
        raise ValueError(f"{model.path.name} has no {token} token, so it cannot use the Gemma 3 chat format")
    return ids[0]


# Completions ----------------------------------------------------------------------------------


def chat(model: Model, messages: Any, *, parse_special: bool = False, **sampling) -> str:
    """Return the model's reply to messages; sampling takes Model.generate()'s options (and
    pan_and_scan for image parts)."""
    ids = chat_prompt(model, messages, parse_special=parse_special, pan_and_scan=sampling.pop("pan_and_scan", False))
    return model.generate(ids, **sampling)


def create_chat_completion(
    model: Model,
    messages: Any,
    max_tokens: int | None = None,
    temperature: float = 0.2,
    top_p: float = 0.95,
    top_k: int = 40,
    min_p: float = 0.05,
    repeat_penalty: float = 1.0,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    stream: bool = False,
    logprobs: bool = False,
    top_logprobs: int = 0,
    parse_special: bool = False,
    cancel_event: threading.Event | None = None,
    pan_and_scan: bool | dict = False,
) -> dict | Iterator[dict]:
    """Generate a reply to messages, returned as an OpenAI chat completion (the dict llama-cpp-python returns).

    max_tokens=None generates until a stop token or the end of the context. With stream=True,
    returns an iterator of "chat.completion.chunk" dicts: a first delta {"role": "assistant"},
    then {"content": ...} deltas, then an empty delta with the finish_reason. logprobs=True adds
    each token's log-probability (the model's log-softmax, before temperature and other sampling
    transforms) and the top_logprobs most likely alternatives. Setting cancel_event from another
    thread stops the generation after the current token, with finish_reason "cancelled".
    Image content parts (OpenAI's image_url with a base64 data URL or a file path) need a model
    loaded with mmproj=; pan_and_scan=True adds crops of wide or tall images.
    """
    if not isinstance(logprobs, bool):
        raise ValueError(f"logprobs must be true or false, got {logprobs!r}")
    top_logprobs = _check_top_logprobs("top_logprobs", top_logprobs)
    if top_logprobs > 0 and not logprobs:
        raise ValueError(f"top_logprobs={top_logprobs} needs logprobs=true")
    ids = chat_prompt(model, messages, parse_special=parse_special, pan_and_scan=pan_and_scan)
    run = _Run(model, ids, dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                               min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, stop=stop),
               top_logprobs if logprobs else None, cancel_event)
    base = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": model_id(model)}
    if stream:
        return _chat_chunks(model, run, base)
    text, entries = run.collect()
    return {
        **base,
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": _chat_logprobs(model, entries),
            "finish_reason": run.finish_reason,
        }],
        "usage": run.usage(),
    }


def create_completion(
    model: Model,
    prompt: str | Sequence[int],
    max_tokens: int | None = 16,
    temperature: float = 0.8,
    top_p: float = 0.95,
    top_k: int = 40,
    min_p: float = 0.05,
    repeat_penalty: float = 1.0,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    stream: bool = False,
    logprobs: int | None = None,
    parse_special: bool = False,
    cancel_event: threading.Event | None = None,
) -> dict | Iterator[dict]:
    """Continue prompt (text, BOS added, or token ids used as given) in the shape of an OpenAI
    text completion ("text_completion"), as llama-cpp-python returns it.

    logprobs=N returns each token's log-probability and the N most likely alternatives in the
    completions format (tokens, text_offset, token_logprobs, top_logprobs).
    """
    if logprobs is not None:
        logprobs = _check_top_logprobs("logprobs", logprobs)
    run = _Run(model, prompt, dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                  min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, stop=stop),
               logprobs, cancel_event, special=parse_special)
    base = {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
            "model": model_id(model)}
    if stream:
        return _completion_chunks(model, run, base)
    text, entries = run.collect()
    return {
        **base,
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": _completion_logprobs(model, entries, 0),
            "finish_reason": run.finish_reason,
        }],
        "usage": run.usage(),
    }


def model_id(model: Model) -> str:
    """Return the name the OpenAI-style responses give the model: its GGUF file name without .gguf."""
    return model.path.stem


def _check_top_logprobs(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {value!r}")
    if not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be from 0 to {MAX_TOP_LOGPROBS}, got {value}")
    return value


class _Run:
    """One generation: text pieces with the log-probabilities of the tokens behind each piece."""

    def __init__(self, model: Model, prompt: str | Sequence[int], sampling: dict, n_logprobs: int | None,
                 cancel_event: threading.Event | None, special: bool = False) -> None:
        # Every argument is checked here, before the first token, so errors raise at the call.
        # This run reads its own stats object, because model.last_stats may be another thread's.
        self.pieces, self.stats = model._generate_with_stats(prompt, special=special, logprobs=n_logprobs, **sampling)
        self.n_logprobs = n_logprobs
        self.cancel_event = cancel_event
        self.cancelled = False
        self.leftover = None  # log-probabilities of tokens whose text no piece carried (cut by a stop string)

    def __iter__(self) -> Iterator[tuple[str, list | None]]:
        seen = 0
        try:
            while True:
                if self.cancel_event is not None and self.cancel_event.is_set():
                    self.cancelled = True
                    break
                try:
                    piece = next(self.pieces)
                except StopIteration:
                    break
                entries = None
                if self.n_logprobs is not None:
                    entries = self.stats.logprobs[seen:]
                    seen = len(self.stats.logprobs)
                yield piece, entries
        finally:
            self.pieces.close()
        if self.n_logprobs is not None:
            self.leftover = (self.stats.logprobs or [])[seen:]

    def collect(self) -> tuple[str, list | None]:
        text = []
        entries = [] if self.n_logprobs is not None else None
        for piece, new in self:
            text.append(piece)
            if new is not None:
                entries += new
        if self.leftover:
            entries += self.leftover
        return "".join(text), entries

    @property
    def finish_reason(self) -> str:
        return CANCELLED if self.cancelled else self.stats.finish_reason

    def usage(self) -> dict:
        prompt = self.stats.prompt_tokens
        completion = self.stats.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_chunks(model: Model, run: _Run, base: dict) -> Iterator[dict]:
    base = {**base, "object": "chat.completion.chunk"}
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]}
    for piece, entries in run:
        yield {**base, "choices": [{"index": 0, "delta": {"content": piece},
                                    "logprobs": _chat_logprobs(model, entries), "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "logprobs": _chat_logprobs(model, run.leftover or None),
                                "finish_reason": run.finish_reason}]}


def _completion_chunks(model: Model, run: _Run, base: dict) -> Iterator[dict]:
    offset = 0
    for piece, entries in run:
        yield {**base, "choices": [{"text": piece, "index": 0,
                                    "logprobs": _completion_logprobs(model, entries, offset), "finish_reason": None}]}
        offset += len(piece)
    yield {**base, "choices": [{"text": "", "index": 0,
                                "logprobs": _completion_logprobs(model, run.leftover or None, offset),
                                "finish_reason": run.finish_reason}]}


def _token_text(model: Model, token: int) -> tuple[str, list[int]]:
    data = model.detokenize_bytes([token])
    return data.decode("utf-8", errors="replace"), list(data)


def _chat_logprobs(model: Model, entries: list | None) -> dict | None:
    if entries is None:
        return None
    content = []
    for token, logprob, alternatives in entries:
        text, data = _token_text(model, token)
        top = []
        for alternative, alternative_logprob in alternatives:
            alternative_text, alternative_data = _token_text(model, alternative)
            top.append({"token": alternative_text, "logprob": alternative_logprob, "bytes": alternative_data})
        content.append({"token": text, "logprob": logprob, "bytes": data, "top_logprobs": top})
    return {"content": content, "refusal": None}


def _completion_logprobs(model: Model, entries: list | None, offset: int) -> dict | None:
    """Completions-format log-probabilities; text_offset counts characters from the start of the
    completion text, starting at offset (a token that ends inside a UTF-8 character adds none)."""
    if entries is None:
        return None
    tokens, text_offsets, token_logprobs, top_logprobs = [], [], [], []
    data = b""
    for token, logprob, alternatives in entries:
        text_offsets.append(offset + len(data.decode("utf-8", errors="ignore")))
        text, _ = _token_text(model, token)
        tokens.append(text)
        token_logprobs.append(logprob)
        top = {_token_text(model, alternative)[0]: value for alternative, value in alternatives}
        top[text] = logprob  # as llama-cpp-python does, the chosen token is always listed
        top_logprobs.append(top)
        data += model.detokenize_bytes([token])
    return {"tokens": tokens, "text_offset": text_offsets, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs}


# Conversation files ---------------------------------------------------------------------------


def save_conversation(path: str | os.PathLike, messages: list[dict]) -> None:
    """Write messages as JSON to path.

    The file is written under a temporary name in the same folder and then renamed, so an
    interrupted save leaves the old file intact.
    """
    path = Path(path)
    _validate_conversation(messages)
    document = {"format": CONVERSATION_FORMAT, "version": CONVERSATION_VERSION, "messages": messages}
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(document, file, ensure_ascii=False, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_conversation(path: str | os.PathLike) -> list[dict]:
    """Read messages written by save_conversation() (or a bare JSON list of messages) and validate them."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected a file written by save_conversation()") from error
    if isinstance(document, dict):
        if document.get("format") != CONVERSATION_FORMAT:
            raise ValueError(f"{path} is not a {CONVERSATION_FORMAT} file (its 'format' is {document.get('format')!r})")
        if document.get("version") != CONVERSATION_VERSION:
            raise ValueError(f"{path} has version {document.get('version')!r}; this program reads version {CONVERSATION_VERSION}")
        messages = document.get("messages")
    else:
        messages = document
    if not isinstance(messages, list):
        raise ValueError(f"{path} has no list of messages")
    try:
        _validate_conversation(messages)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return messages


def _validate_conversation(messages: list[dict]) -> None:
    # A saved conversation may also be empty, or hold only a system message set before the first turn.
    if len(messages) == 1 and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        _system_text(messages[0].get("content"))
    elif messages:
        validate_messages(messages)
