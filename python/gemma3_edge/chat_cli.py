"""Interactive terminal chat (gemma3-edge chat): streamed answers, history, slash commands.

Answers go to stdout; the status line after each answer, command output and errors go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from typing import Iterator, TextIO

from gemma3_edge import chat
from gemma3_edge.model import Model

HELP = """Commands:
  /reset         start a new conversation (the system message stays)
  /system TEXT   set the system message; /system alone removes it
  /save PATH     write the conversation to PATH as JSON
  /load PATH     continue a conversation written by /save
  /image PATH    attach an image file to the next message (needs a vision model: --mmproj)
  /help          show this help
  /quit          leave (Ctrl-D at the prompt also leaves)
Ctrl-C stops the answer being written and returns to the prompt.
Start a line with // to send a message that begins with /."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the chat command's options (the model options are added by the caller)."""
    parser.add_argument("-n", "--n-predict", type=int, default=512, help="maximum new tokens per answer (default: 512)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 disables (default: 40)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass in (0, 1] (default: 0.95)")
    parser.add_argument("--min-p", type=float, default=0.05, help="drop tokens below min_p x the top probability (default: 0.05)")
    parser.add_argument("--repeat-penalty", type=float, default=1.0, help="penalty for recent tokens; 1 disables (default: 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--system", default=None, help="system message for the conversation")
    parser.add_argument("--load", default=None, metavar="PATH", help="start from a conversation written by /save")


class ChatSession:
    """A conversation with a model: the system message, the turns so far and the sampling options."""

    def __init__(self, model: Model, sampling: dict, system: str | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.model = model
        self.sampling = sampling
        self.system = system
        self.turns: list[dict] = []
        self.pending_images: list[str] = []  # paths that /image attaches to the next user message
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    @property
    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def reply(self, text: str) -> None:
        """Stream the answer to text to out, then add both to the conversation.

        Ctrl-C (KeyboardInterrupt) stops the answer: what was written so far stays in the
        conversation, and an answer stopped before its first character is dropped with its question.
        """
        user = {"role": "user", "content": text}
        if self.pending_images:
            images = [{"type": "image", "path": path} for path in self.pending_images]
            user["content"] = images + [{"type": "text", "text": text}]
            self.pending_images = []
        # Token ids, or a MultimodalPrompt when the conversation contains images. Images seen in
        # earlier turns come from the model's image cache instead of being encoded again.
        ids = chat.chat_prompt(self.model, self.messages + [user])
        if len(ids) >= self.model.n_ctx:
            raise ValueError(
                f"the conversation has {len(ids)} tokens and no longer fits in the context of {self.model.n_ctx}; "
                "/reset starts a new one, or restart with a larger --ctx"
            )
        started = time.perf_counter()
        pieces = self.model.generate(ids, stream=True, **self.sampling)
        answer = []
        interrupted = False
        with _interrupt_flag() as stop:
            try:
                for piece in pieces:
                    self.out.write(piece)
                    self.out.flush()
                    answer.append(piece)
                    if stop.is_set():
                        break
            except KeyboardInterrupt:
                stop.set()
            finally:
                pieces.close()
            interrupted = stop.is_set()
        elapsed = time.perf_counter() - started
        self.out.write("\n")
        self.out.flush()
        text_answer = "".join(answer)
        if text_answer or not interrupted:
            self.turns += [user, {"role": "assistant", "content": text_answer}]
        self._print_status(elapsed, "interrupted" if interrupted else None)

    def _print_status(self, elapsed: float, finish: str | None) -> None:
        stats = self.model.last_stats
        decode_seconds = elapsed - stats.prompt_seconds
        # As GenerationStats rates it: the first token comes from the prefill, so rate the decoded ones.
        rate = max(0, stats.completion_tokens - 1) / decode_seconds if decode_seconds > 0 else 0.0
        computed = stats.prompt_tokens - stats.cached_prompt_tokens
        images = ""
        if stats.images_encoded or stats.images_cached:
            images = (f"; images: {stats.images_encoded} encoded, {stats.images_cached} from the image cache, "
                      f"{stats.image_seconds:.2f} s")
        print(
            f"[{stats.completion_tokens} tokens at {rate:.1f} tokens/s; prompt {stats.prompt_tokens} tokens: "
            f"{stats.cached_prompt_tokens} reused from the cache, {computed} computed in {stats.prompt_seconds:.2f} s; "
            f"finish: {finish or stats.finish_reason}{images}]",
            file=self.err, flush=True,
        )

    def run_command(self, line: str) -> bool:
        """Run a slash command; return False when the command ends the chat."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            print(HELP, file=self.err)
        elif name == "/reset":
            self.turns = []
            self.pending_images = []
            print("conversation cleared", file=self.err)
        elif name == "/image":
            self.attach_image(argument)
        elif name == "/system":
            self.system = argument or None
            print("system message set" if argument else "system message removed", file=self.err)
        elif name in ("/save", "/load"):
            if not argument:
                print(f"{name} needs a file path, e.g. {name} chat.json", file=self.err)
            elif name == "/save":
                self.save(argument)
            else:
                self.load(argument)
        else:
            print(f"unknown command {name}; /help lists the commands", file=self.err)
        return True

    def attach_image(self, path: str) -> None:
        """Check that path is an image file and attach it to the next user message."""
        if not self.model.has_vision:
            print(f"/image failed: {self.model.path.name} was loaded without a vision tower; restart with "
                  "--mmproj FILE (the model's vision projector GGUF) to send images", file=self.err)
            return
        if not path:
            print("/image needs an image file path, e.g. /image photo.jpg", file=self.err)
            return
        from gemma3_edge import vision

        try:
            vision.load_image(path).close()
        except (OSError, ValueError) as error:
            print(f"/image failed: {error}", file=self.err)
            return
        self.pending_images.append(path)
        print(f"image {path} attached to the next message ({len(self.pending_images)} attached)", file=self.err)

    def save(self, path: str) -> None:
        try:
            chat.save_conversation(path, self.messages)
        except (OSError, ValueError) as error:
            print(f"save failed: {error}", file=self.err)
            return
        print(f"saved {len(self.messages)} messages to {path}", file=self.err)

    def load(self, path: str) -> None:
        try:
            messages = chat.load_conversation(path)
        except (OSError, ValueError) as error:
            print(f"load failed: {error}", file=self.err)
            return
        system = None
        if messages and messages[0]["role"] == "system":
            system = messages[0]["content"]
            messages = messages[1:]
        if messages and messages[-1]["role"] == "user":
            print(f"load failed: {path} ends with a user message; a loaded conversation must end with an answer",
                  file=self.err)
            return
        if not isinstance(system, (str, type(None))):
            print(f"load failed: {path} has a system message that is not plain text", file=self.err)
            return
        if any(not isinstance(m["content"], str) for m in messages) and not self.model.has_vision:
            print(f"load failed: {path} has image content, but {self.model.path.name} was loaded without a vision "
                  "tower; restart with --mmproj FILE", file=self.err)
            return
        self.system = system
        self.turns = messages
        print(f"loaded {len(messages)} messages from {path}", file=self.err)


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """Turn SIGINT (Ctrl-C) into a flag while the block runs.

    A KeyboardInterrupt raised between two bytecodes can land while the model updates its record
    of the cached tokens. The model then drops that record, and the next turn recomputes the whole
    prompt. With the flag, the caller stops between tokens instead. Outside the main thread, where
    Python cannot set signal handlers, only the caller sets the flag.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run(args: argparse.Namespace, model: Model, stdin: TextIO = sys.stdin) -> int:
    """Run the chat loop until /quit or end of input; return the exit status."""
    sampling = dict(max_tokens=args.n_predict, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed)
    session = ChatSession(model, sampling, system=args.system)
    if args.load:
        session.load(args.load)
    if stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    print(f"chatting with {chat.model_id(model)}; /help lists the commands, Ctrl-D leaves", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stdout)
            return 0
        except KeyboardInterrupt:
            # Ctrl-C at the prompt drops the line being typed, as shells do.
            print(file=sys.stdout)
            continue
        try:
            if line.startswith("/") and not line.startswith("//"):
                if not session.run_command(line.strip()):
                    return 0
                continue
            if line.startswith("//"):
                line = line[1:]
            if not line.strip():
                continue
            session.reply(line)
        except ValueError as error:
            # A bad sampling option or image, or a conversation longer than the context.
            print(f"error: {error}", file=sys.stderr)
        except OSError as error:
            # An image of the conversation could not be read again (images are kept as paths).
            print(f"error: {error}; the message was not sent, /reset starts a new conversation",
                  file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
