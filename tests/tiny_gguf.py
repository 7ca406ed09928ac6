"""Write tiny Gemma 3 GGUF files with random weights, for tests that need a model file but not
the real one: loader validation, broken-file corpora and fast API checks."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

SPECIAL_PIECES = ["<pad>", "<eos>", "<bos>", "<unk>"]
TEXT_PIECES = ["▁", "a", "b", "c", "ab", "▁a", "▁ab", "1", "2", "\n", "<start_of_turn>", "<end_of_turn>"]


def tiny_vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and SentencePiece types of a small vocabulary with byte fallback."""
    pieces = list(SPECIAL_PIECES)
    types = [3, 3, 3, 2]  # control, control, control, unknown
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    for piece in TEXT_PIECES:
        pieces.append(piece)
        types.append(3 if piece.startswith("<") else 1)
    scores = [0.0] * len(pieces)
    for i, piece in enumerate(pieces):
        if types[i] == 1:
            scores[i] = -float(i)  # earlier pieces merge first
    return pieces, scores, types


def write_tiny_gemma3(
    path: str | Path,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    d_ff: int = 128,
    n_heads: int = 2,
    n_kv_heads: int = 1,
    head_dim: int = 32,
    sliding_window: int = 8,
    context_length: int = 256,
    weight_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    seed: int = 0,
    skip_tensors: tuple[str, ...] = (),
    extra_metadata: dict | None = None,
    architecture: str = "gemma3",
    vocab_rows_extra: int = 0,
    nan_tensor: str | None = None,
) -> Path:
    """Write a gemma3 GGUF with random weights and return its path."""
    rng = np.random.default_rng(seed)
    pieces, scores, types = tiny_vocabulary()
    vocab = len(pieces)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-gemma3-test")
    writer.add_context_length(context_length)
    writer.add_embedding_length(d_model)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(d_ff)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(sliding_window)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    for key, value in (extra_metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)

    def add(name: str, shape: tuple[int, ...], scale: float, quantize: bool, offset: float = 0.0) -> None:
        if name in skip_tensors:
            return
        data = (offset + rng.standard_normal(shape) * scale).astype(np.float32)
        if name == nan_tensor:
            data.flat[0] = np.nan
        if quantize and weight_type == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        elif quantize and weight_type != gguf.GGMLQuantizationType.F32:
            raw = gguf.quants.quantize(data, weight_type)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=weight_type)
        else:
            writer.add_tensor(name, data)

    # numpy shapes are (rows, cols); GGUF stores ne = (cols, rows).
    add("token_embd.weight", (vocab + vocab_rows_extra, d_model), 0.5, True)
    # Norm weights are stored with Gemma's (1 + w) folded in, as llama.cpp's converter does.
    add("output_norm.weight", (d_model,), 0.1, False, offset=1.0)
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    for i in range(n_layers):
        b = f"blk.{i}."
        for norm, size in [("attn_norm", d_model), ("attn_q_norm", head_dim), ("attn_k_norm", head_dim),
                           ("post_attention_norm", d_model), ("ffn_norm", d_model), ("post_ffw_norm", d_model)]:
            add(b + norm + ".weight", (size,), 0.1, False, offset=1.0)
        add(b + "attn_q.weight", (q_dim, d_model), d_model**-0.5, True)
        add(b + "attn_k.weight", (kv_dim, d_model), d_model**-0.5, True)
        add(b + "attn_v.weight", (kv_dim, d_model), d_model**-0.5, True)
        add(b + "attn_output.weight", (d_model, q_dim), q_dim**-0.5, True)
        add(b + "ffn_gate.weight", (d_ff, d_model), d_model**-0.5, True)
        add(b + "ffn_up.weight", (d_ff, d_model), d_model**-0.5, True)
        add(b + "ffn_down.weight", (d_model, d_ff), d_ff**-0.5, True)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
