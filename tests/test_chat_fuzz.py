"""Property tests of the Python chat renderer (gemma3_edge.chat) with hypothesis: arbitrary
JSON-like input is either rendered or rejected with ValueError, valid conversations render to
the Gemma 3 format, and text inside a message can never become a control token."""

from __future__ import annotations

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gemma3_edge import chat  # noqa: E402

# Deterministic examples and no example database, so CI runs are reproducible and the checkout
# stays clean; 200 examples per property take a few seconds.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

CONTROL_TEXTS = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<start_of_image>", "<pad>", "<unk>"]
text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(CONTROL_TEXTS + ["", " ", "\n", "  user\n", "model\n", "\u2581", "\ufffd"]),
    st.lists(st.sampled_from(CONTROL_TEXTS + ["a", " ", "\n", "é", "😀"]), max_size=6).map("".join),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "image_url", "name"]) | st.text(max_size=5), children,
        max_size=4),
    max_leaves=20,
)
message_like = st.dictionaries(
    st.sampled_from(["role", "content", "type", "text"]),
    st.sampled_from(list(chat.ROLES) + ["tool", "", None, 3]) | json_values,
    max_size=3,
)


@st.composite
def conversations(draw):
    """Valid messages: an optional system message, then user/assistant turns ending with a user turn."""
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    n_turns = draw(st.integers(min_value=0, max_value=3)) * 2 + 1
    for index in range(n_turns):
        role = "user" if index % 2 == 0 else draw(st.sampled_from(["assistant", "model"]))
        if draw(st.booleans()):
            content = draw(text)
        else:
            content = [{"type": "text", "text": draw(text)} for _ in range(draw(st.integers(0, 3)))]
        messages.append({"role": role, "content": content})
    return messages


@FUZZ
@given(st.one_of(json_values, st.lists(message_like, max_size=5), st.lists(json_values, max_size=4)))
def test_arbitrary_input_renders_or_raises_value_error(messages):
    try:
        rendered = chat.render_chat(messages)
    except ValueError:
        return
    assert isinstance(rendered, str)
    assert rendered.startswith("<bos><start_of_turn>user\n")
    assert rendered.endswith("<start_of_turn>model\n")


@FUZZ
@given(conversations())
def test_valid_conversations_render_gemma3_format(messages):
    segments = chat.render_segments(messages)
    rendered = chat.render_chat(messages)
    assert "".join(s.text for s in segments) == rendered
    turns = [m for m in messages if m["role"] != "system"]
    controls = [s.text for s in segments if s.kind == "control"]
    assert controls[0] == "<bos>"
    assert controls.count("<start_of_turn>") == len(turns) + 1
    assert controls.count("<end_of_turn>") == len(turns)
    headers = [s.text for s in segments if s.kind == "template" and s.text != "\n"]
    expected_roles = ["model" if m["role"] in ("assistant", "model") else "user" for m in turns]
    assert headers == [role + "\n" for role in expected_roles] + ["model\n"]
    for segment in segments:
        if segment.kind == "content" and not (messages[0]["role"] == "system" and segment.text.endswith("\n\n")):
            assert segment.text == segment.text.strip(), f"content not stripped: {segment.text!r}"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import gemma3_edge
    from tiny_gguf import write_tiny_gemma3

    return gemma3_edge.Model(write_tiny_gemma3(tmp_path_factory.mktemp("tiny") / "t.gguf"), n_ctx=64, n_threads=1)


@FUZZ
@given(messages=conversations())
def test_message_text_never_becomes_control_token(tiny_model, messages):
    ids = chat.chat_token_ids(tiny_model, messages)
    start = tiny_model.tokenize("<start_of_turn>", add_bos=False, special=True)
    end = tiny_model.tokenize("<end_of_turn>", add_bos=False, special=True)
    assert len(start) == 1
    assert len(end) == 1
    turns = [m for m in messages if m["role"] != "system"]
    assert ids[0] == tiny_model.config["bos_id"]
    assert ids.count(tiny_model.config["bos_id"]) == 1
    assert ids.count(start[0]) == len(turns) + 1
    assert ids.count(end[0]) == len(turns)


@pytest.fixture(scope="module")
def conversation_path(tmp_path_factory):
    return tmp_path_factory.mktemp("conversation") / "chat.json"


@FUZZ
@given(messages=conversations())
def test_conversation_file_round_trip(conversation_path, messages):
    path = conversation_path  # overwritten by each example: save_conversation replaces the file
    chat.save_conversation(path, messages)
    assert chat.load_conversation(path) == messages
    assert json.loads(path.read_text(encoding="utf-8"))["messages"] == messages
