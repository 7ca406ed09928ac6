"""Quality of a quantized file against its source: KL divergence, top-1 agreement, perplexity.

The chunks are those of llama.cpp's llama-perplexity --kl-divergence: the text (without one
trailing newline) is tokenized once with BOS, cut into chunks of n_ctx tokens whose first token
is replaced by BOS, and the logits at positions n_ctx/2 .. n_ctx-2 are scored against the next
token. The source's logits come from the runtime's float32 path (every weight dequantized),
the quantized file's from its quantized path. Each chunk's logits are compared and dropped, in
float64, so memory stays at two chunks of [n_ctx/2, vocab].
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    peak = rows.max(axis=1, keepdims=True)
    shifted = rows - peak
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def chunk_statistics(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> dict:
    """Per-position KL(reference || candidate), top-1 agreement and both NLLs, for logits [n, vocab]."""
    log_p = _log_softmax(reference)
    log_q = _log_softmax(candidate)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    index = np.arange(len(targets))
    return {
        "kl": np.maximum(kl, 0.0),
        "same_top1": reference.argmax(axis=1) == candidate.argmax(axis=1),
        "nll_reference": -log_p[index, targets],
        "nll_candidate": -log_q[index, targets],
    }


def quality(source: str | Path, quantized: str | Path, text: str, *, n_ctx: int = 512, n_chunks: int | None = None,
            n_threads: int | None = None, progress: bool = True) -> dict:
    """Compare QUANTIZED against SOURCE (GGUF files) on text; returns the statistics as a dict."""
    from gemma3_edge import Model

    source, quantized = Path(source), Path(quantized)
    reference_model = Model(source, n_ctx=n_ctx, n_threads=n_threads, precision="f32")
    candidate_model = Model(quantized, n_ctx=n_ctx, n_threads=n_threads, precision="quantized")
    if reference_model.n_vocab != candidate_model.n_vocab:
        raise ValueError(f"vocabulary sizes differ: {source} has {reference_model.n_vocab} tokens, "
                         f"{quantized} {candidate_model.n_vocab}")
    if text.endswith("\n"):
        text = text[:-1]  # llama-perplexity -f drops one trailing newline
    tokens = reference_model.tokenize(text, add_bos=True)
    if tokens != candidate_model.tokenize(text, add_bos=True):
        raise ValueError("the two files tokenize the text differently; they do not share a vocabulary")
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    n_chunks = available if n_chunks is None else min(n_chunks, available)
    first = n_ctx // 2
    bos = reference_model.config["bos_id"]
    kl, same, nll_ref, nll_cand = [], [], [], []
    chunks = range(n_chunks)
    if progress:
        try:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="quality", unit="chunk", leave=False)
        except ImportError:
            pass
    for c in chunks:
        ids = tokens[c * n_ctx:(c + 1) * n_ctx]
        ids[0] = bos
        reference = reference_model.logits(ids, first)[:-1]
        candidate = candidate_model.logits(ids, first)[:-1]
        stats = chunk_statistics(reference, candidate, np.asarray(ids[first + 1:]))
        del reference, candidate
        kl.append(stats["kl"])
        same.append(stats["same_top1"])
        nll_ref.append(stats["nll_reference"])
        nll_cand.append(stats["nll_candidate"])
    kl_all = np.concatenate(kl)
    ppl_ref = math.exp(float(np.concatenate(nll_ref).mean()))
    ppl_cand = math.exp(float(np.concatenate(nll_cand).mean()))
    return {
        "source": str(source), "quantized": str(quantized), "n_ctx": n_ctx, "n_chunks": n_chunks,
        "n_scored": int(kl_all.size),
        "mean_kld": float(kl_all.mean()), "kld_p99": float(np.percentile(kl_all, 99)),
        "kld_median": float(np.median(kl_all)), "max_kld": float(kl_all.max()),
        "same_top1": float(np.concatenate(same).mean()),
        "ppl_source": ppl_ref, "ppl_quantized": ppl_cand, "ppl_ratio": ppl_cand / ppl_ref,
        "source_bytes": source.stat().st_size, "quantized_bytes": quantized.stat().st_size,
        "source_bpw": _bits_per_weight(source), "quantized_bpw": _bits_per_weight(quantized),
    }


def _bits_per_weight(path: Path) -> float | None:
    """Tensor bits per weight of a GGUF file (all tensors), None if the gguf package cannot read it."""
    try:
        from .gguf_read import tensor_sizes

        n_elements, n_bytes = tensor_sizes(path)
    except (ValueError, OSError):
        return None
    return 8.0 * n_bytes / n_elements if n_elements else None


def format_quality(result: dict) -> str:
    return "\n".join([
        f"chunks: {result['n_chunks']} x {result['n_ctx']} tokens ({result['n_scored']} scored)",
        f"mean KLD: {result['mean_kld']:.5f}   99th percentile: {result['kld_p99']:.5f}   "
        f"median: {result['kld_median']:.5f}",
        f"same top-1: {100 * result['same_top1']:.2f}%",
        f"perplexity: source {result['ppl_source']:.4f}, quantized {result['ppl_quantized']:.4f}, "
        f"ratio {result['ppl_ratio']:.4f}",
        f"size: source {result['source_bytes'] / 1e6:.1f} MB ({_fmt_bpw(result['source_bpw'])}), "
        f"quantized {result['quantized_bytes'] / 1e6:.1f} MB ({_fmt_bpw(result['quantized_bpw'])})",
    ])


def _fmt_bpw(value: float | None) -> str:
    return "? bpw" if value is None else f"{value:.3f} bpw"
