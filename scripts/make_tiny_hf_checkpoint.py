#!/usr/bin/env python3
"""Write tiny random Gemma 3 Hugging Face checkpoints, and record transformers' logits for them.

The checkpoints are deterministic (numpy seeds), so tests rebuild them without torch:
  write_checkpoint(directory, name)  -> config.json, model.safetensors, tokenizer.model, ...
With --golden, each checkpoint is also loaded with transformers (Gemma3ForCausalLM or
Gemma3ForConditionalGeneration), saved again with save_pretrained to check that transformers
reads and writes the same tensors, and its float32 logits for a fixed text are stored in
tests/golden/quantize_tiny/<name>.npz with the token ids.

The SentencePiece model (tests/golden/quantize_tiny/tokenizer.model) is trained here with
--tokenizer from the package's calibration text: BPE, byte fallback, Gemma 3's special ids
(pad 0, eos 1, bos 2, unk 3) and no dummy prefix.

Usage: python scripts/make_tiny_hf_checkpoint.py [--tokenizer] [--golden] [--out DIR NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "quantize_tiny"
TOKENIZER = GOLDEN / "tokenizer.model"
GOLDEN_TEXT = ("First Citizen: Before we proceed any further, hear me speak. The licenses for most software "
               "are designed to take away your freedom to share and change it.")
SPECIAL_TOKENS = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"}
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

# Odd sizes on purpose. "text" has rows that no K-quant or 128-wide block divides (fallbacks),
# seven layers (layer 5 is global) and linear RoPE scaling. "wide" has rows of 256 and 512 for
# the K-quants and the project's 128-wide formats. "multimodal" is a
# Gemma3ForConditionalGeneration with a vision tower and more embedding rows than tokenizer pieces.
CONFIGS = {
    "text": {"architecture": "Gemma3ForCausalLM", "dtype": "bfloat16", "seed": 1,
             "text": {"hidden_size": 96, "intermediate_size": 160, "num_hidden_layers": 7,
                      "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 32,
                      "sliding_window": 8, "query_pre_attn_scalar": 32, "max_position_embeddings": 256,
                      "rope_scaling": {"rope_type": "linear", "factor": 2.0}}},
    "wide": {"architecture": "Gemma3ForCausalLM", "dtype": "float32", "seed": 2,
             "text": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128,
                      "sliding_window": 16, "query_pre_attn_scalar": 128, "max_position_embeddings": 512}},
    "multimodal": {"architecture": "Gemma3ForConditionalGeneration", "dtype": "float16", "seed": 3,
                   "extra_rows": 4,
                   "text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64,
                            "sliding_window": 16, "query_pre_attn_scalar": 64, "max_position_embeddings": 512},
                   "vision": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                              "vision_use_head": False}},
}


def vocabulary_size() -> int:
    from sentencepiece import SentencePieceProcessor

    return SentencePieceProcessor(model_file=str(TOKENIZER)).vocab_size()


def text_config(name: str) -> dict:
    spec = CONFIGS[name]
    config = {"model_type": "gemma3_text", "vocab_size": vocabulary_size() + spec.get("extra_rows", 0),
              "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
              "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
              "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    config.update(spec["text"])
    return config


def config_json(name: str) -> dict:
    spec = CONFIGS[name]
    text = text_config(name)
    if spec["architecture"] == "Gemma3ForCausalLM":
        return {"architectures": ["Gemma3ForCausalLM"], **text, "torch_dtype": spec["dtype"]}
    vision = {"model_type": "siglip_vision_model", **spec["vision"]}
    return {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text,
            "vision_config": vision, "mm_tokens_per_image": 4, "image_token_index": text["vocab_size"] - 1,
            "tie_word_embeddings": True, "torch_dtype": spec["dtype"]}


def _vision_shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the SigLIP vision tower and projector tensors (transformers 5 layout)."""
    v, d = spec["vision"], spec["text"]["hidden_size"]
    h, f, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    n_patches = (v["image_size"] // p) ** 2
    shapes = {"model.vision_tower.vision_model.embeddings.patch_embedding.weight": (h, 3, p, p),
              "model.vision_tower.vision_model.embeddings.patch_embedding.bias": (h,),
              "model.vision_tower.vision_model.embeddings.position_embedding.weight": (n_patches, h),
              "model.vision_tower.vision_model.post_layernorm.weight": (h,),
              "model.vision_tower.vision_model.post_layernorm.bias": (h,),
              "model.multi_modal_projector.mm_input_projection_weight": (h, d),
              "model.multi_modal_projector.mm_soft_emb_norm.weight": (h,)}
    for i in range(v["num_hidden_layers"]):
        b = f"model.vision_tower.vision_model.encoder.layers.{i}."
        for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[b + f"self_attn.{part}.weight"] = (h, h)
            shapes[b + f"self_attn.{part}.bias"] = (h,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[b + f"{norm}.weight"] = (h,)
            shapes[b + f"{norm}.bias"] = (h,)
        shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (f, h), (f,)
        shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (h, f), (h,)
    return shapes


def make_weights(name: str) -> dict[str, np.ndarray]:
    """Deterministic random float32 weights under Hugging Face names."""
    spec = CONFIGS[name]
    t = text_config(name)
    rng = np.random.default_rng(spec["seed"])
    prefix = "model." if spec["architecture"] == "Gemma3ForCausalLM" else "model.language_model."
    d, ff, hd = t["hidden_size"], t["intermediate_size"], t["head_dim"]
    q, kv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    weights = {prefix + "embed_tokens.weight": rng.standard_normal((t["vocab_size"], d)) * 0.3,
               prefix + "norm.weight": rng.standard_normal(d) * 0.1}
    for i in range(t["num_hidden_layers"]):
        b = f"{prefix}layers.{i}."
        for key, shape, fan_in in (("self_attn.q_proj", (q, d), d), ("self_attn.k_proj", (kv, d), d),
                                   ("self_attn.v_proj", (kv, d), d), ("self_attn.o_proj", (d, q), q),
                                   ("mlp.gate_proj", (ff, d), d), ("mlp.up_proj", (ff, d), d),
                                   ("mlp.down_proj", (d, ff), ff)):
            weights[b + key + ".weight"] = rng.standard_normal(shape) / np.sqrt(fan_in)
        for key, size in (("self_attn.q_norm", hd), ("self_attn.k_norm", hd), ("input_layernorm", d),
                          ("post_attention_layernorm", d), ("pre_feedforward_layernorm", d),
                          ("post_feedforward_layernorm", d)):
            weights[b + key + ".weight"] = rng.standard_normal(size) * 0.1
    if spec["architecture"] == "Gemma3ForConditionalGeneration":
        for key, shape in _vision_shapes(spec).items():
            weights[key] = rng.standard_normal(shape) * 0.05
    return {k: v.astype(np.float32) for k, v in weights.items()}


def _to_dtype(array: np.ndarray, dtype: str) -> tuple[str, bytes]:
    if dtype == "float32":
        return "F32", array.astype("<f4").tobytes()
    if dtype == "float16":
        return "F16", array.astype("<f2").tobytes()
    bits = array.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")  # round to nearest even
    return "BF16", rounded.tobytes()


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    header, blobs, offset = {}, [], 0
    for key in sorted(tensors):
        code, blob = _to_dtype(tensors[key], dtype)
        header[key] = {"dtype": code, "shape": list(tensors[key].shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def write_checkpoint(directory: str | Path, name: str) -> Path:
    """Write checkpoint `name` into directory (created) and return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = CONFIGS[name]
    (directory / "config.json").write_text(json.dumps(config_json(name), indent=1), encoding="utf-8")
    write_safetensors(directory / "model.safetensors", make_weights(name), spec["dtype"])
    shutil.copyfile(TOKENIZER, directory / "tokenizer.model")
    decoder = {str(i): {"content": c, "special": True} for i, c in SPECIAL_TOKENS.items()}
    (directory / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}), encoding="utf-8")
    return directory


def weights_digest(name: str) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(make_weights(name).items()):
        digest.update(key.encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def golden_ids() -> list[int]:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(TOKENIZER))
    return [2] + sp.encode(GOLDEN_TEXT)


def train_tokenizer() -> None:
    import sentencepiece as spm

    text = (REPO / "quantize" / "data" / "calibration.txt").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(text, encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "tiny"), model_type="bpe", vocab_size=421,
            byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, user_defined_symbols=list(TURN_TOKENS),
            add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
            split_digits=True, num_threads=1, character_coverage=1.0, minloglevel=2)
        GOLDEN.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "tiny.model", TOKENIZER)


def make_golden(name: str) -> None:
    import torch
    import transformers

    spec = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_checkpoint(Path(tmp) / "ours", name)
        model_class = getattr(transformers, spec["architecture"])
        model = model_class.from_pretrained(directory, dtype=torch.float32)
        model.eval()
        # transformers must read every tensor we wrote, and write the same set back.
        model.save_pretrained(Path(tmp) / "resaved")
        ours = json.loads((directory / "model.safetensors").read_bytes()[8:8 + struct.unpack(
            "<Q", (directory / "model.safetensors").read_bytes()[:8])[0]])
        resaved_path = Path(tmp) / "resaved" / "model.safetensors"
        resaved = json.loads(resaved_path.read_bytes()[8:8 + struct.unpack("<Q", resaved_path.read_bytes()[:8])[0]])
        missing = set(ours) - set(resaved) - {"__metadata__"}
        if missing:
            raise SystemExit(f"{name}: transformers did not keep {sorted(missing)[:5]}")
        ids = golden_ids()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
    n_vocab = vocabulary_size()
    np.savez_compressed(GOLDEN / f"{name}.npz", ids=np.array(ids, dtype=np.int32),
                        logits=logits[:, :n_vocab].astype(np.float32))
    meta_path = GOLDEN / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta[name] = {"weights_sha256": weights_digest(name), "transformers": transformers.__version__,
                  "torch": torch.__version__, "text": GOLDEN_TEXT}
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    print(f"{name}: {len(ids)} tokens, logits {logits.shape} -> {GOLDEN / (name + '.npz')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", action="store_true", help="train tests/golden/quantize_tiny/tokenizer.model")
    parser.add_argument("--golden", action="store_true", help="record transformers' logits (needs torch)")
    parser.add_argument("--out", nargs=2, metavar=("DIR", "NAME"), help="write checkpoint NAME into DIR")
    args = parser.parse_args()
    if args.tokenizer:
        train_tokenizer()
    if args.golden:
        for name in CONFIGS:
            make_golden(name)
    if args.out:
        if args.out[1] not in CONFIGS:
            print(f"unknown checkpoint {args.out[1]!r}; choose one of {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        print(write_checkpoint(args.out[0], args.out[1]))
    if not (args.tokenizer or args.golden or args.out):
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
