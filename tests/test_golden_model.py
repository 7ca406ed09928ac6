"""Compare gemma3_edge on the default GGUF with the stored transformers reference.

The goldens in tests/golden/ come from scripts/make_goldens.py: transformers' Gemma 3
run in float64 on the GGUF weights dequantized to float32. This file needs only
numpy and gemma3_edge.

Tolerances:
- F32_ROW_BAR = 1e-4: max|ours - reference| / max|reference| over a logit row, the
  accuracy bar set for the float32 path. transformers' own float32 path is within
  1.9e-5 of the float64 reference on these prompts (metadata.json,
  reference.transformers_float32_max_row_error), almost all of it from rounding the
  RoPE angle position * frequency to float32 at positions above 512.
- F32_TIE_MARGIN = 1e-3 logit: a greedy float32 continuation may leave the reference
  only at a token whose reference top-1 minus top-2 margin is below this. The texts
  are compared up to that token and no further, since the contexts then differ.
- Quantized path (Q4_K_M weights, quantized kernels): top-1 agreement with the
  reference must be 100% where the reference margin is >= 0.5 logit and >= 97% over
  all continuation positions. These are the acceptance bars of the quantized path,
  measured on teacher-forced prompt + reference continuation.
- Perplexity: within 1% of llama.cpp's WikiText-2 perplexity of the same GGUF
  (tests/golden/perplexity.json, written by scripts/llama_perplexity.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import reference_util as ru

gemma3_edge = pytest.importorskip("gemma3_edge")

F32_ROW_BAR = 1e-4
F32_TIE_MARGIN = 1e-3
QUANTIZED_CONFIDENT_MARGIN = 0.5
QUANTIZED_MIN_AGREEMENT = 0.97
PERPLEXITY_REL_BAR = 0.01

GOLDENS = ru.load_goldens()
PROMPT_NAMES = [case["name"] for case in GOLDENS["prompts"]]
PROMPTS_WITH_ROWS = [case["name"] for case in GOLDENS["prompts"] if len(case["row_positions"])]
CONTINUATION_NAMES = [case["name"] for case in GOLDENS["continuations"]]


def _prompt(name: str) -> dict:
    return next(case for case in GOLDENS["prompts"] if case["name"] == name)


def _continuation(name: str) -> dict:
    return next(case for case in GOLDENS["continuations"] if case["name"] == name)


# The longest golden sequence (1,452 tokens) fits the n_ctx=2048 of the session
# fixtures f32_model and quantized_model in conftest.py.
_F32_SUMMARIES: dict[str, dict] = {}


def _f32_summary(model, name: str) -> dict:
    """Run the float32 path on a golden prompt once and keep only what the checks
    need, so the [n, 262144] logits (up to 1.5 GB) are not kept between tests."""
    if name in _F32_SUMMARIES:
        return _F32_SUMMARIES[name]
    case = _prompt(name)
    logits = model.logits(case["ids"].tolist())
    summary = {"shape": logits.shape, "dtype": logits.dtype,
               "finite": bool(np.isfinite(logits).all())}
    summary["at_top_ids"] = np.take_along_axis(logits, case["top_ids"].astype(np.int64), axis=1)
    summary["max_abs"] = np.abs(logits).max(axis=1)
    summary["logsumexp"] = np.empty(len(logits))
    for start in range(0, len(logits), 128):  # float64 blocks of 256 MiB
        block = logits[start:start + 128].astype(np.float64)
        peak = block.max(axis=1, keepdims=True)
        summary["logsumexp"][start:start + 128] = peak[:, 0] + np.log(np.exp(block - peak).sum(axis=1))
    summary["rows"] = logits[case["row_positions"]].copy()
    _F32_SUMMARIES[name] = summary
    return summary


def _worst(errors: np.ndarray) -> str:
    position = int(np.argmax(errors))
    return f"worst {errors[position]:.3g} at position {position} of {errors.size}"


def test_goldens_match_default_gguf():
    path = ru.default_model_path()
    digest = ru.sha256_of_file(path)
    expected = GOLDENS["meta"]["gguf_sha256"]
    assert digest == expected, (
        f"default model {path} has sha256 {digest}, goldens were made from "
        f"{expected}; rerun scripts/make_goldens.py"
    )


@pytest.mark.parametrize("name", PROMPT_NAMES + CONTINUATION_NAMES)
def test_tokenize_matches_reference(f32_model, name):
    # Every later check feeds stored ids, so a tokenizer mismatch shows up here alone.
    case = _prompt(name) if name in PROMPT_NAMES else _continuation(name)
    expected = case["ids"].tolist()
    if name in CONTINUATION_NAMES:
        expected = expected[:case["n_prompt"]]
    # special=True because the reference parsed the chat prompt's <start_of_turn>
    # markers as special tokens. The other texts contain no special-token strings.
    ours = f32_model.tokenize(case["text"], add_bos=True, special=True)
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, expected)) if a != b),
                      min(len(ours), len(expected)))
    assert ours == expected, (
        f"{name}: {len(ours)} tokens vs reference {len(expected)}, first difference at "
        f"{first_diff}: ours {ours[first_diff:first_diff + 5]} reference "
        f"{expected[first_diff:first_diff + 5]}"
    )


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_f32_logits_shape(f32_model, name):
    summary = _f32_summary(f32_model, name)
    n = len(_prompt(name)["ids"])
    assert summary["shape"] == (n, GOLDENS["meta"]["vocab_size"])
    assert summary["dtype"] == np.float32
    assert summary["finite"], f"{name}: logits contain NaN or inf"


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_f32_top64_logits(f32_model, name):
    case = _prompt(name)
    summary = _f32_summary(f32_model, name)
    errors = ru.row_relative_error(summary["at_top_ids"], case["top_logits"], case["max_abs"])
    assert errors.max() <= F32_ROW_BAR, f"{name}: top-64 logits, {_worst(errors)}"


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_f32_max_abs_and_logsumexp(f32_model, name):
    # |delta max|logit|| and |delta logsumexp| are each <= max|delta logit| over the
    # row, so the row bar bounds them too. They cover the whole vocabulary at every
    # position, where the stored rows cover only a few positions.
    case = _prompt(name)
    summary = _f32_summary(f32_model, name)
    scale = case["max_abs"].astype(np.float64)
    max_abs_errors = np.abs(summary["max_abs"] - case["max_abs"]) / scale
    assert max_abs_errors.max() <= F32_ROW_BAR, f"{name}: max |logit|, {_worst(max_abs_errors)}"
    lse_errors = np.abs(summary["logsumexp"] - case["logsumexp"]) / scale
    assert lse_errors.max() <= F32_ROW_BAR, f"{name}: logsumexp, {_worst(lse_errors)}"


@pytest.mark.parametrize("name", PROMPTS_WITH_ROWS)
def test_f32_full_rows(f32_model, name):
    case = _prompt(name)
    summary = _f32_summary(f32_model, name)
    errors = ru.row_relative_error(summary["rows"], case["rows"], case["max_abs"][case["row_positions"]])
    for position, error in zip(case["row_positions"].tolist(), errors.tolist()):
        assert error <= F32_ROW_BAR, f"{name}: whole row at position {position}, error {error:.3g}"


def test_f32_capital_of_france(f32_model):
    expected = GOLDENS["meta"]["capital_of_france"]
    text = f32_model.generate(expected["prompt"], max_tokens=len(expected["new_ids"]), temperature=0.0)
    assert text == expected["text"]


@pytest.mark.parametrize("name", CONTINUATION_NAMES)
def test_f32_greedy_continuation(f32_model, name):
    # Rule: the texts must match token by token (compared through the reference's
    # per-token character offsets). At the first token where they differ, the
    # reference margin must be < F32_TIE_MARGIN, and comparison stops there.
    case = _continuation(name)
    meta_case = next(c for c in GOLDENS["meta"]["continuations"] if c["name"] == name)
    expected = case["continuation_text"]
    n_new = len(case["margin"])
    text = f32_model.generate(case["text"], max_tokens=n_new, temperature=0.0)

    for k, end in enumerate(meta_case["continuation_offsets"]):
        if text[:end] == expected[:end]:
            continue
        margin = float(case["margin"][k])
        assert margin < F32_TIE_MARGIN, (
            f"{name}: diverged at new token {k} where the reference margin is {margin:.3g} "
            f">= {F32_TIE_MARGIN}; ours {text[:end]!r} reference {expected[:end]!r}"
        )
        return
    assert text == expected


def _quantized_top1(model, case) -> np.ndarray:
    n_prompt = case["n_prompt"]
    n_new = len(case["top1"])
    logits = model.logits(case["ids"].tolist())
    return logits[n_prompt - 1:n_prompt - 1 + n_new].argmax(axis=1)


def test_quantized_top1_agreement(quantized_model):
    ours, reference, margins, per_case = [], [], [], []
    for case in GOLDENS["continuations"]:
        top1 = _quantized_top1(quantized_model, case)
        ours.append(top1)
        reference.append(case["top1"])
        margins.append(case["margin"])
        per_case.append(f"{case['name']} {int((top1 == case['top1']).sum())}/{top1.size}")
    overall, confident, n_all, n_confident = ru.top1_agreement(
        np.concatenate(ours), np.concatenate(reference), np.concatenate(margins),
        QUANTIZED_CONFIDENT_MARGIN)
    report = (f"agreement {overall:.2%} over {n_all} positions, {confident:.2%} over the "
              f"{n_confident} with margin >= {QUANTIZED_CONFIDENT_MARGIN}; " + ", ".join(per_case))
    assert confident == 1.0, report
    assert overall >= QUANTIZED_MIN_AGREEMENT, report


@pytest.mark.slow
def test_quantized_perplexity_matches_llama_cpp(quantized_model, wikitext):
    reference_path = ru.GOLDEN_DIR / "perplexity.json"
    if not reference_path.is_file():
        pytest.fail(f"{reference_path} not found; run scripts/llama_perplexity.py to create it")
    reference = json.loads(reference_path.read_text(encoding="utf-8"))
    expected = reference["perplexity"]
    ours = quantized_model.perplexity(wikitext, n_ctx=reference["n_ctx"], n_chunks=reference["n_chunks"])
    assert abs(ours - expected) <= PERPLEXITY_REL_BAR * expected, (
        f"perplexity {ours:.4f}, llama.cpp {expected:.4f} ({reference['n_chunks']} chunks of "
        f"{reference['n_ctx']} tokens)"
    )
