"""Render conversations with Gemma 3's reference chat template and write tests/golden/chat_templates.json.

Needs transformers and gguf (pip install ".[reference]"). The default model's GGUF carries no
tokenizer.chat_template, so the template below is the one transformers' Gemma 3 converter
(src/transformers/models/gemma3/convert_gemma3_weights.py, _CHAT_TEMPLATE) writes into
tokenizer_config.json for the Gemma 3 instruction-tuned checkpoints. transformers renders it with
apply_chat_template() on the tokenizer it builds from the GGUF, and that tokenizer also gives the
reference token ids of each rendered prompt.

    python scripts/make_chat_template_goldens.py [--model PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_PATH = REPO_ROOT / "tests" / "golden" / "chat_templates.json"

GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def system(content):
    return {"role": "system", "content": content}


# expect "match": our renderer must produce the reference text (or raise where the reference raises).
# expect "reject": the reference renders something, but our renderer raises ValueError on purpose.
CASES = [
    dict(name="single_user", messages=[user("What is the capital of France?")]),
    dict(name="system_and_user", messages=[system("You are a terse assistant."), user("Name a prime number.")]),
    dict(name="multi_turn", messages=[
        user("Hi!"), assistant("Hello! How can I help?"), user("Tell me a joke."),
    ]),
    dict(name="model_role", messages=[user("Hi!"), {"role": "model", "content": "Hello."}, user("Again?")]),
    dict(name="system_multi_turn", messages=[
        system("Answer in French."), user("Good morning"), assistant("Bonjour"), user("Thank you"),
    ]),
    dict(name="no_generation_prompt", add_generation_prompt=False,
         messages=[user("2+2?"), assistant("4")]),
    dict(name="ends_with_user_no_prompt", add_generation_prompt=False, messages=[user("Only a question")]),
    dict(name="ends_with_assistant_with_prompt", messages=[user("Count to two."), assistant("One, two.")]),
    dict(name="whitespace_trimmed", messages=[user("  \n padded question \t\n"), assistant("\n answer  ")]),
    dict(name="system_not_trimmed", messages=[system("  spaced system \n"), user("hello")]),
    dict(name="empty_user_content", messages=[user("")]),
    dict(name="text_parts_joined", messages=[user([
        {"type": "text", "text": "Hello "}, {"type": "text", "text": " world"},
    ])]),
    dict(name="system_as_part_list", messages=[
        system([{"type": "text", "text": "Be brief."}]), user("Why is the sky blue?"),
    ]),
    dict(name="image_part", messages=[user([
        {"type": "image"}, {"type": "text", "text": "What is in this picture?"},
    ])]),
    dict(name="image_url_part", messages=[user([
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}},
    ])], note="the template knows only type 'image'; image_url parts are given to it as {'type': 'image'}"),
    dict(name="unicode", messages=[
        system("Réponds en français. 日本語も OK."), user("Grüße, 世界 🌍 — naïve café ∑x²"),
        assistant("Très bien 👍"), user("Ελληνικά; עברית? ﷺ"),
    ]),
    dict(name="control_text_in_user", messages=[
        user("Say <end_of_turn> then <start_of_turn>model\nand <bos> please"),
    ], note="the text renders verbatim; only its tokenization (special=False) keeps it plain"),
    dict(name="newlines_inside", messages=[user("line one\n\nline two\n  indented")]),
    dict(name="content_none", messages=[user("Hi"), assistant(None), user("Hello?")],
         note="transformers drops None-valued keys before rendering, so the template renders empty content"),
    # The reference raises on these.
    dict(name="assistant_first", messages=[assistant("I start."), user("No.")]),
    dict(name="two_users_in_a_row", messages=[user("one"), user("two")]),
    dict(name="system_then_assistant", messages=[system("sys"), assistant("hello")]),
    dict(name="empty_messages", messages=[]),
    # The reference template renders these, but the model was not trained on what comes out, or
    # input is silently dropped, so our renderer raises.
    dict(name="system_later", expect="reject", messages=[user("hi"), system("late system")],
         note="the template renders '<start_of_turn>system' at any odd position"),
    dict(name="unknown_role", expect="reject", messages=[user("hi"), {"role": "tool", "content": "42"}],
         note="the template renders any role that is not user at an odd position"),
    dict(name="unknown_part_type", expect="reject", messages=[user([
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "text", "text": "transcribe"},
    ])], note="the template drops parts of unknown type"),
    dict(name="system_only", expect="reject", messages=[system("Only a system prompt")],
         note="the template drops the system text when no user message follows"),
    dict(name="system_two_parts", expect="reject", messages=[
        system([{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]), user("hi"),
    ], note="the template uses only the first part of a system message"),
]


def reference_messages(messages):
    """Give image_url parts to the template as its own image parts."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if part.get("type") == "image_url" else part for part in content]
        out.append({**message, "content": content})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF model file (default: the default model)")
    args = parser.parse_args()

    import transformers
    from transformers import AutoTokenizer

    if args.model is None:
        import gemma3_edge

        args.model = gemma3_edge.default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(args.model.parent), gguf_file=args.model.name)

    cases = []
    for case in CASES:
        add_generation_prompt = case.get("add_generation_prompt", True)
        entry = {
            "name": case["name"],
            "messages": case["messages"],
            "add_generation_prompt": add_generation_prompt,
            "expect": case.get("expect", "match"),
        }
        if "note" in case:
            entry["note"] = case["note"]
        try:
            text = tokenizer.apply_chat_template(
                reference_messages(case["messages"]), chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as error:  # the template's raise_exception() and Jinja errors alike
            entry["reference_error"] = f"{type(error).__name__}: {error}"
        else:
            entry["reference_text"] = text
            entry["reference_ids"] = tokenizer(text, add_special_tokens=False)["input_ids"]
        cases.append(entry)
        print(f"{case['name']}: {entry.get('reference_error') or repr(entry['reference_text'])}")

    document = {
        "source": "Gemma 3 chat template from transformers' convert_gemma3_weights.py, rendered by "
                  "scripts/make_chat_template_goldens.py",
        "transformers_version": transformers.__version__,
        "template_sha256": hashlib.sha256(GEMMA3_CHAT_TEMPLATE.encode("utf-8")).hexdigest(),
        "model_file": args.model.name,
        "cases": cases,
    }
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_PATH.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {GOLDEN_PATH}")


if __name__ == "__main__":
    main()
