"""Compare gemma3_edge with Hugging Face transformers run live on the same GGUF.

Skipped unless torch, transformers and accelerate (which transformers needs to load
GGUF files) are importable. The reference is transformers' Gemma 3 in float64 on the
GGUF weights dequantized to float32, loaded like the goldens by
tests/reference_util.py. Loading takes 1-2 minutes on 2 cores.

Tolerances, as in test_golden_model.py:
- float32 path: max|ours - reference| / max|reference| <= 1e-4 on every whole logit
  row, the accuracy bar set for the float32 path.
- quantized path: top-1 agreement on the reference's greedy continuation (teacher
  forced), 100% where the reference margin is >= 0.5 logit and >= 97% overall, the
  acceptance bars of the quantized path.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference_util as ru

torch = pytest.importorskip("torch", reason="the live reference needs torch")
pytest.importorskip("transformers", reason="the live reference needs transformers")
pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
gemma3_edge = pytest.importorskip("gemma3_edge")

pytestmark = [pytest.mark.reference, pytest.mark.slow]

F32_ROW_BAR = 1e-4
QUANTIZED_CONFIDENT_MARGIN = 0.5
QUANTIZED_MIN_AGREEMENT = 0.97
N_CONTINUATION = 32

SHORT_PROMPT = "Gemma is a family of lightweight, state-of-the-art open models built from"
# Index of the title line of the article "Dick Rifenburg" in the WikiText-2 test
# split cut at "\n"; none of the goldens uses this article.
LONG_PROMPT_FIRST_LINE = 163
LONG_PROMPT_CHARS = 3600  # 866 tokens, beyond the 512-token sliding window


def _long_prompt() -> str:
    text = ru.read_wikitext()
    if text is None:
        pytest.skip(f"WikiText-2 test split not found at {ru.WIKITEXT_PATH}")
    article = "\n".join(text.split("\n")[LONG_PROMPT_FIRST_LINE:])
    cut = article.rindex(" ", 0, LONG_PROMPT_CHARS)
    return article[:cut]


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(2)
    return ru.load_reference_model(ru.default_model_path(), "float64")


@pytest.fixture(scope="module", params=["short", "long"])
def prompt(request):
    return SHORT_PROMPT if request.param == "short" else _long_prompt()


def _reference_ids(reference, text: str) -> list[int]:
    _, tokenizer = reference
    return tokenizer(text).input_ids


def test_tokenize_matches_transformers(reference, f32_model, prompt):
    expected = _reference_ids(reference, prompt)
    assert f32_model.tokenize(prompt, add_bos=True, special=False) == expected


def test_f32_logits_match_transformers(reference, f32_model, prompt):
    model, _ = reference
    ids = _reference_ids(reference, prompt)
    ours = f32_model.logits(ids)
    assert ours.shape == (len(ids), model.config.vocab_size)

    worst_error, worst_position = 0.0, -1
    for start, block in ru.reference_logit_rows(model, ids):
        errors = ru.row_relative_error(ours[start:start + block.shape[0]], block,
                                       np.abs(block).max(axis=1))
        if errors.max() > worst_error:
            worst_error, worst_position = float(errors.max()), start + int(errors.argmax())
    assert worst_error <= F32_ROW_BAR, (
        f"{len(ids)}-token prompt: max|diff| / max|logit| {worst_error:.3g} at position "
        f"{worst_position}"
    )


def test_quantized_top1_matches_transformers(reference, quantized_model):
    model, tokenizer = reference
    ours, expected, margins = [], [], []
    for text in (SHORT_PROMPT, _long_prompt()):
        prompt_ids = tokenizer(text).input_ids
        # One thread: single-token float64 steps are dominated by per-operator thread
        # synchronization on a loaded 2-core machine (see scripts/make_goldens.py).
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=N_CONTINUATION,
                                        min_new_tokens=N_CONTINUATION, do_sample=False, pad_token_id=0)
        finally:
            torch.set_num_threads(2)
        ids = output[0].tolist()
        first = len(prompt_ids) - 1
        for start, block in ru.reference_logit_rows(model, ids):
            for r in range(block.shape[0]):
                if first <= start + r < first + N_CONTINUATION:
                    best = np.argsort(-block[r], kind="stable")[:2]
                    expected.append(best[0])
                    margins.append(block[r, best[0]] - block[r, best[1]])
        logits = quantized_model.logits(ids)
        ours.extend(logits[first:first + N_CONTINUATION].argmax(axis=1).tolist())

    overall, confident, n_all, n_confident = ru.top1_agreement(
        np.asarray(ours), np.asarray(expected), np.asarray(margins), QUANTIZED_CONFIDENT_MARGIN)
    report = (f"agreement {overall:.2%} over {n_all} positions, {confident:.2%} over the "
              f"{n_confident} with margin >= {QUANTIZED_CONFIDENT_MARGIN}")
    assert confident == 1.0, report
    assert overall >= QUANTIZED_MIN_AGREEMENT, report
