"""gemma3-edge chat, driven as a person would: lines on stdin, Ctrl-C mid-answer, Ctrl-D to leave."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pexpect
import pytest

CHAT_COMMAND = [sys.executable, "-m", "gemma3_edge.cli", "chat", "-c", "1024", "-t", "2", "--temperature", "0"]
STATUS = re.compile(r"\[(\d+) tokens at [\d.]+ tokens/s; prompt (\d+) tokens: (\d+) reused from the cache, "
                    r"(\d+) computed in [\d.]+ s; finish: (\w+)\]")


def run_chat(lines: list[str], *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(CHAT_COMMAND + list(options), input="".join(line + "\n" for line in lines),
                          capture_output=True, text=True, timeout=300)


def test_commands_and_history(tmp_path):
    path = tmp_path / "saved.json"
    result = run_chat([
        "Hello there", "/system Be brief.", "What is 2+2?", f"/save {path}", "/reset", f"/load {path}",
        "/bogus", "/save", "/help", "And 3+3?",
    ], "-n", "6")
    assert result.returncode == 0, result.stderr
    statuses = STATUS.findall(result.stderr)
    assert len(statuses) == 3
    for completion, prompt, reused, computed, finish in statuses:
        assert int(reused) + int(computed) == int(prompt)
        assert finish in ("stop", "length")
    # Turn 2 changed the system message, which sits in the first turn, so only the turn opening is reused.
    assert int(statuses[1][2]) > 0
    # The loaded conversation is what the cache holds, so the third turn reuses all of it.
    assert int(statuses[2][2]) >= int(statuses[1][1])
    assert "unknown command /bogus" in result.stderr
    assert "/save needs a file path" in result.stderr
    assert "/system TEXT" in result.stderr
    saved = json.loads(path.read_text(encoding="utf-8"))
    roles = [message["role"] for message in saved["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert saved["messages"][0]["content"] == "Be brief."
    assert saved["messages"][3]["content"] == "What is 2+2?"


def test_quit_and_double_slash(tmp_path):
    path = tmp_path / "c.json"
    result = run_chat(["//help me", f"/save {path}", "/quit", "never sent"], "-n", "2")
    assert result.returncode == 0, result.stderr
    assert len(STATUS.findall(result.stderr)) == 1
    assert json.loads(path.read_text(encoding="utf-8"))["messages"][0]["content"] == "/help me"


def test_load_failures_are_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops", encoding="utf-8")
    ends_with_user = tmp_path / "user.json"
    ends_with_user.write_text(json.dumps([{"role": "user", "content": "hi"}]), encoding="utf-8")
    result = run_chat([f"/load {bad}", f"/load {ends_with_user}", f"/load {tmp_path / 'missing.json'}"])
    assert result.returncode == 0
    assert result.stderr.count("load failed") == 3
    assert "not valid JSON" in result.stderr
    assert "ends with a user message" in result.stderr


def test_context_overflow_is_reported():
    result = run_chat(["word " * 1200, "/quit"], "-n", "2")
    assert result.returncode == 0
    assert "no longer fits in the context of 1024" in result.stderr


def test_bad_sampling_option_is_reported():
    result = run_chat(["Hello"], "--top-p", "2")
    assert result.returncode == 0
    assert "top_p must be in (0, 1]" in result.stderr


def test_ctrl_c_stops_answer_then_eof_exits():
    child = pexpect.spawn(CHAT_COMMAND[0], CHAT_COMMAND[1:] + ["-n", "1000"], encoding="utf-8", timeout=120)
    try:
        child.expect_exact("> ")
        child.sendline("Hello there")
        child.expect_exact("Hello there\r\n")  # the terminal's echo of the line
        child.expect(r"\S")  # the answer has started
        child.kill(signal.SIGINT)
        child.expect(STATUS)
        assert child.match.group(5) == "interrupted"
        assert int(child.match.group(1)) < 1000
        first_prompt = int(child.match.group(2))
        child.expect_exact("> ")
        # Ctrl-C at the prompt drops the line and keeps the chat.
        child.sendintr()
        child.expect_exact("> ")
        child.sendline("Again")
        child.expect_exact("Again\r\n")
        child.expect(r"\S")
        child.kill(signal.SIGINT)
        child.expect(STATUS)
        # The interrupted answer stayed in the history and the cache, so this turn reuses at least
        # the previous prompt (less its last token, which generation always recomputes).
        assert int(child.match.group(3)) >= first_prompt - 1
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


IMAGE_STATUS = re.compile(r"\[(\d+) tokens at [\d.]+ tokens/s; prompt (\d+) tokens: (\d+) reused from the cache, "
                          r"\d+ computed in [\d.]+ s; finish: \w+; images: (\d+) encoded, (\d+) from the image cache")


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    """The tiny random vision model of scripts/make_tiny_vision_model.py and a sample image file."""
    pytest.importorskip("gguf")
    from test_vision import tiny

    folder = tmp_path_factory.mktemp("chat-vision")
    text, mmproj = tiny.write_model(folder)
    image = folder / "square.png"
    tiny.sample_images()["square"].save(image)
    return text, mmproj, image


def test_image_command_attaches_image(vision_model, tmp_path):
    text, mmproj, image = vision_model
    saved = tmp_path / "chat.json"
    command = CHAT_COMMAND[1:] + ["-c", "2048", "-n", "3", "-m", str(text), "--mmproj", str(mmproj)]
    child = pexpect.spawn(CHAT_COMMAND[0], command, encoding="utf-8", timeout=180)
    try:
        child.expect_exact("> ")
        child.sendline(f"/image {tmp_path / 'missing.png'}")
        child.expect_exact("/image failed: image file not found")
        child.expect_exact("> ")
        child.sendline(f"/image {image}")
        child.expect_exact("attached to the next message (1 attached)")
        child.expect_exact("> ")
        child.sendline("what is it?")
        child.expect(IMAGE_STATUS)
        # 256 soft tokens plus the text: the image was encoded once.
        assert int(child.match.group(2)) > 256
        assert (child.match.group(4), child.match.group(5)) == ("1", "0")
        child.expect_exact("> ")
        child.sendline("and then?")
        child.expect(IMAGE_STATUS)
        # The follow-up turn sends the whole conversation again and takes the image from the cache.
        assert (child.match.group(4), child.match.group(5)) == ("0", "1")
        child.expect_exact("> ")
        child.sendline(f"/save {saved}")
        child.expect_exact("saved")
        child.expect_exact("> ")
        child.sendline(f"/load {saved}")
        child.expect_exact("loaded 4 messages")
        child.expect_exact("> ")
        # The conversation keeps the image as a path: once the file is gone, a message fails
        # with an error and the chat goes on.
        image.rename(image.with_suffix(".moved"))
        try:
            child.sendline("and now?")
            child.expect_exact("the message was not sent")
            child.expect_exact("> ")
        finally:
            image.with_suffix(".moved").rename(image)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    messages = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    assert messages[0]["content"] == [{"type": "image", "path": str(image)}, {"type": "text", "text": "what is it?"}]
    assert messages[2]["content"] == "and then?"


def test_image_command_without_vision_tower(tmp_path):
    saved = tmp_path / "with-image.json"
    messages = [{"role": "user", "content": [{"type": "image", "path": str(tmp_path / "photo.png")},
                                             {"type": "text", "text": "what is it?"}]},
                {"role": "assistant", "content": "a cat"}]
    saved.write_text(json.dumps(messages), encoding="utf-8")
    result = run_chat([f"/image {tmp_path / 'photo.png'}", f"/load {saved}", "/quit"])
    assert result.returncode == 0
    assert "/image failed" in result.stderr
    assert "without a vision tower" in result.stderr
    assert "--mmproj" in result.stderr
    assert "has image content" in result.stderr
