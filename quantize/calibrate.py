"""Calibration: run the source model on text and collect each linear layer's input statistics.

A float32 numpy forward pass of the Gemma 3 text model (the same equations as the runtime and
transformers' Gemma3ForCausalLM) accumulates, per layer, the second-moment matrix H = sum x x^T
of the inputs of the q/k/v projections (shared), of the attention output projection, of the
gate/up projections (shared) and of the down projection. diag(H) / tokens is the per-input-
channel importance used by the scale search; H itself drives GPTQ rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .source import SLIDING_PATTERN, Source

DEFAULT_CALIBRATION_FILE = Path(__file__).resolve().parent / "data" / "calibration.txt"

# Collected input (by name) of each linear weight.
INPUT_OF = {"attn_q": "attn_in", "attn_k": "attn_in", "attn_v": "attn_in", "attn_output": "attn_out",
            "ffn_gate": "ffn_in", "ffn_up": "ffn_in", "ffn_down": "ffn_mid"}


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x / np.sqrt(variance + np.float32(eps))) * weight


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)))


@dataclass
class ModelShape:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    window: int
    query_scale: float
    base_global: float
    base_local: float
    rope_factor: float

    @classmethod
    def from_source(cls, source: Source) -> "ModelShape":
        h = source.hparams
        n_layers = int(h["block_count"])
        head_dim = int(h["attention.key_length"])
        d_model = int(h["embedding_length"])
        n_heads = int(h["attention.head_count"])
        default_scalar = d_model // n_heads if n_layers == 62 else head_dim
        scalar = float(h.get("attention.query_pre_attn_scalar", default_scalar))
        factor = float(h.get("rope.scaling.factor", 1.0)) if h.get("rope.scaling.type", "linear") == "linear" else 1.0
        return cls(n_layers, d_model, n_heads, int(h["attention.head_count_kv"]), head_dim,
                   float(h["attention.layer_norm_rms_epsilon"]), int(h["attention.sliding_window"]),
                   1.0 / math.sqrt(scalar), float(h.get("rope.freq_base", 1e6)),
                   float(h.get("rope.freq_base_swa", 1e4)), factor)


class Forward:
    """The text model in numpy float32, with weights taken from a dict of GGUF-named arrays."""

    def __init__(self, shape: ModelShape, weights: dict[str, np.ndarray]):
        self.shape = shape
        self.w = weights

    def _rope(self, x: np.ndarray, positions: np.ndarray, base: float, factor: float) -> np.ndarray:
        hd = self.shape.head_dim
        half = hd // 2
        exponent = (2 * np.arange(half, dtype=np.float32)) / np.float32(hd)
        inv_freq = (np.float32(1.0) / np.power(np.float32(base), exponent)) / np.float32(factor)
        angle = positions.astype(np.float32)[:, None] * inv_freq[None, :]
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        return self.w["token_embd.weight"][ids] * np.float32(math.sqrt(self.shape.d_model))

    def layer(self, i: int, h: np.ndarray, collect: dict | None = None) -> np.ndarray:
        s, w = self.shape, self.w
        b = f"blk.{i}."
        n = h.shape[0]
        x = rms_norm(h, w[b + "attn_norm.weight"], s.eps)
        if collect is not None:
            collect["attn_in"] = x
        q = (x @ w[b + "attn_q.weight"].T).reshape(n, s.n_heads, s.head_dim)
        k = (x @ w[b + "attn_k.weight"].T).reshape(n, s.n_kv_heads, s.head_dim)
        v = (x @ w[b + "attn_v.weight"].T).reshape(n, s.n_kv_heads, s.head_dim)
        q = rms_norm(q, w[b + "attn_q_norm.weight"], s.eps)
        k = rms_norm(k, w[b + "attn_k_norm.weight"], s.eps)

        positions = np.arange(n)
        is_global = (i + 1) % SLIDING_PATTERN == 0
        base, factor = (s.base_global, s.rope_factor) if is_global else (s.base_local, 1.0)
        q = self._rope(q, positions, base, factor)
        k = self._rope(k, positions, base, factor)

        group = s.n_heads // s.n_kv_heads
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) * np.float32(s.query_scale)
        distance = positions[:, None] - positions[None, :]
        allowed = distance >= 0
        if not is_global:
            allowed &= distance < s.window
        scores = np.where(allowed[None], scores, np.float32(-np.inf))
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(n, s.n_heads * s.head_dim)
        if collect is not None:
            collect["attn_out"] = out
        attn = out @ w[b + "attn_output.weight"].T
        h = h + rms_norm(attn, w[b + "post_attention_norm.weight"], s.eps)

        x = rms_norm(h, w[b + "ffn_norm.weight"], s.eps)
        if collect is not None:
            collect["ffn_in"] = x
        mid = gelu_tanh(x @ w[b + "ffn_gate.weight"].T) * (x @ w[b + "ffn_up.weight"].T)
        if collect is not None:
            collect["ffn_mid"] = mid
        ffn = mid @ w[b + "ffn_down.weight"].T
        return h + rms_norm(ffn, w[b + "post_ffw_norm.weight"], s.eps)

    def final_hidden(self, h: np.ndarray) -> np.ndarray:
        return rms_norm(h, self.w["output_norm.weight"], self.shape.eps)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return hidden @ self.w["token_embd.weight"].T


@dataclass
class Calibration:
    """Per-layer input statistics: hessian[(layer, input)] = sum over tokens of x x^T (float64)."""

    n_tokens: int
    hessian: dict = field(default_factory=dict)
    residuals: list = field(default_factory=list)  # first chunk: residual stream at each layer input
    chunks: list = field(default_factory=list)     # token ids per chunk

    def for_tensor(self, name: str) -> np.ndarray | None:
        parts = name.split(".")
        if parts[0] != "blk" or parts[2] not in INPUT_OF:
            return None
        return self.hessian.get((int(parts[1]), INPUT_OF[parts[2]]))

    def importance(self, name: str) -> np.ndarray | None:
        h = self.for_tensor(name)
        if h is None:
            return None
        return (np.diag(h) / max(self.n_tokens, 1)).astype(np.float32)


def calibration_chunks(token_ids: list[int], bos_id: int, n_ctx: int, n_chunks: int) -> list[np.ndarray]:
    """BOS-led chunks of n_ctx tokens (the first token of each replaced by BOS, as llama-perplexity
    and llama-imatrix cut text)."""
    chunks = []
    for c in range(min(n_chunks, len(token_ids) // n_ctx)):
        ids = np.array(token_ids[c * n_ctx:(c + 1) * n_ctx], dtype=np.int64)
        ids[0] = bos_id
        chunks.append(ids)
    if not chunks:
        raise ValueError(f"calibration text has {len(token_ids)} tokens, fewer than one chunk of {n_ctx}; "
                         "give a longer --calibration file or a smaller --calibration-ctx")
    return chunks


def tokenizer_for(source: Source):
    """Build the runtime's tokenizer over the source vocabulary."""
    from gemma3_edge import _core

    v = source.vocab
    return _core.Tokenizer(v.tokens, v.scores, v.types, bos_id=v.bos_id, eos_id=v.eos_id, unk_id=v.unk_id,
                           pad_id=v.pad_id)


def collect(source: Source, weights: dict[str, np.ndarray], text: str, n_ctx: int = 512, n_chunks: int = 16,
            keep_residuals: bool = False, progress=None) -> Calibration:
    """Run the model over the text and accumulate every layer's input second moments."""
    tokenizer = tokenizer_for(source)
    ids = list(tokenizer.encode(text, add_bos=True))
    chunks = calibration_chunks(ids, source.vocab.bos_id, n_ctx, n_chunks)
    forward = Forward(ModelShape.from_source(source), weights)
    calibration = Calibration(n_tokens=0, chunks=chunks)
    iterator = progress(chunks, desc="calibration", unit="chunk") if progress else chunks
    for index, chunk in enumerate(iterator):
        keep = keep_residuals and index == 0
        h = forward.embed(chunk)
        stream = []
        for i in range(forward.shape.n_layers):
            if keep:
                stream.append(h)
            inputs: dict = {}
            h = forward.layer(i, h, inputs)
            for key, x in inputs.items():
                x64 = x.astype(np.float64)
                acc = calibration.hessian.get((i, key))
                product = x64.T @ x64
                calibration.hessian[(i, key)] = product if acc is None else acc + product
        if keep:
            stream.append(h)
            calibration.residuals.append(stream)
        calibration.n_tokens += len(chunk)
    return calibration
