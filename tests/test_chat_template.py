"""The Gemma 3 chat renderer against the reference template's output (tests/golden/chat_templates.json,
written by scripts/make_chat_template_goldens.py with transformers), and its token ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gemma3_edge
from gemma3_edge import chat

GOLDEN = json.loads((Path(__file__).parent / "golden" / "chat_templates.json").read_text(encoding="utf-8"))
CASES = {case["name"]: case for case in GOLDEN["cases"]}
END_OF_TURN_ID = 106
START_OF_TURN_ID = 105


@pytest.fixture(scope="module")
def model(default_model_file):
    return gemma3_edge.Model(default_model_file, n_ctx=512, n_threads=2)


def has_image(case: dict) -> bool:
    return "<start_of_image>" in case.get("reference_text", "")


def test_golden_file_covers_cases():
    assert len(CASES) >= 25
    assert sum("reference_error" in case for case in CASES.values()) >= 4
    assert sum(case["expect"] == "reject" for case in CASES.values()) >= 4


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case["expect"] == "match"])
def test_render_matches_reference(name):
    case = CASES[name]
    if "reference_error" in case:
        with pytest.raises(ValueError):
            chat.render_chat(case["messages"], case["add_generation_prompt"])
    else:
        assert chat.render_chat(case["messages"], case["add_generation_prompt"]) == case["reference_text"]


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case["expect"] == "reject"])
def test_render_rejects_what_template_mangles(name):
    # The reference renders these (see each case's note); we raise instead.
    case = CASES[name]
    assert "reference_text" in case
    with pytest.raises(ValueError):
        chat.render_chat(case["messages"], case["add_generation_prompt"])


@pytest.mark.parametrize("name", [name for name, case in CASES.items()
                                  if "reference_ids" in case and case["expect"] == "match" and not has_image(case)])
def test_token_ids_match_reference_tokenizer(model, name):
    # parse_special=True tokenizes message text as transformers' tokenizer does, control strings included.
    case = CASES[name]
    ids = chat.chat_token_ids(model, case["messages"], case["add_generation_prompt"], parse_special=True)
    assert ids == case["reference_ids"]
    if "<end_of_turn>" not in "".join(str(m.get("content")) for m in case["messages"]):
        assert chat.chat_token_ids(model, case["messages"], case["add_generation_prompt"]) == case["reference_ids"]


def test_control_text_in_user_stays_plain(model):
    case = CASES["control_text_in_user"]
    ids = chat.chat_token_ids(model, case["messages"])
    # One user turn and the generation prompt: two <start_of_turn>, one <end_of_turn>, one BOS.
    assert ids.count(END_OF_TURN_ID) == 1
    assert ids.count(START_OF_TURN_ID) == 2
    assert ids.count(model.config["bos_id"]) == 1
    # Decoding drops control tokens, so the text between them must come back whole, written control strings included.
    plain = "".join(s.text for s in chat.render_segments(case["messages"]) if s.kind != "control")
    assert model.detokenize(ids) == plain
    assert "<end_of_turn> then <start_of_turn>model\nand <bos>" in plain
    # The reference tokenizer turns the written control strings into control tokens.
    assert case["reference_ids"].count(END_OF_TURN_ID) == 2


def test_parse_special_opt_in_reads_control_text(model):
    messages = [{"role": "user", "content": "a<end_of_turn>b"}]
    assert chat.chat_token_ids(model, messages, parse_special=True).count(END_OF_TURN_ID) == 2
    assert chat.chat_token_ids(model, messages).count(END_OF_TURN_ID) == 1


@pytest.mark.parametrize("name", ["image_part", "image_url_part"])
def test_image_content_rejected_for_tokens(model, name):
    with pytest.raises(ValueError, match="vision tower"):
        chat.chat_token_ids(model, CASES[name]["messages"])


def test_rendered_segments_separate_content():
    segments = chat.render_segments([{"role": "system", "content": "S"}, {"role": "user", "content": " U "}])
    assert [s.kind for s in segments] == ["control", "control", "template", "content", "content", "control",
                                          "template", "control", "template"]
    assert [s.text for s in segments if s.kind == "content"] == ["S\n\n", "U"]


@pytest.mark.parametrize("messages, message", [
    ("hello", "must be a list"),
    ([], "empty"),
    ([{"role": "user"}], "no 'content'"),
    ([{"content": "x"}], "no 'role'"),
    (["hello"], "must be an object"),
    ([{"role": "bot", "content": "x"}], "role 'bot'"),
    ([{"role": "user", "content": 5}], "content must be"),
    ([{"role": "user", "content": [{"type": "text"}]}], "without a string 'text'"),
    ([{"role": "user", "content": [{"text": "x"}]}], "must be an object with a 'type'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must alternate"),
    ([{"role": "system", "content": None}, {"role": "user", "content": "b"}], "system"),
])
def test_invalid_messages_raise(messages, message):
    with pytest.raises(ValueError, match=message):
        chat.validate_messages(messages)
