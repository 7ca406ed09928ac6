#!/usr/bin/env python3
"""Make a tiny random Gemma 3 vision model and the goldens that tests/test_vision*.py check.

The model is a Gemma3ForConditionalGeneration at toy sizes with the real geometry of the
vision side: a 64 x 64 grid of patches, 4 x 4 average pooling to 256 image tokens, 256 soft
tokens per image in the prompt. Its weights come from numpy's raw PCG64 bit stream, so tests
rebuild the same GGUF files without torch (the goldens store a digest of the weights, which
detects a change of that stream):

  text GGUF    llama.cpp's gemma3 layout and a small SentencePiece vocabulary that contains
               Gemma 3's image control tokens (<start_of_image>, <end_of_image>,
               <image_soft_token>).
  mmproj GGUF  llama.cpp's vision-projector layout for Gemma 3 (general.architecture "clip",
               clip.projector_type "gemma3", tensors v.* and mm.*), as llama.cpp's
               convert_hf_to_gguf.py --mmproj writes it.

With torch and transformers installed (`pip install ".[reference]"`), the script also loads
the same weights into transformers' Gemma3ForConditionalGeneration, runs its processor
(Gemma3Processor with the PIL image processor) and model in float64, and writes
tests/golden/vision/: pixel values, vision-tower outputs, projected soft tokens, token ids and
logits for one image, two images and Pan & Scan crops, and the float32 gap of transformers.

Usage:
  python scripts/make_tiny_vision_model.py --goldens          # rewrite tests/golden/vision
  python scripts/make_tiny_vision_model.py --out DIR          # write the GGUF files only
  python scripts/make_tiny_vision_model.py --out DIR --hf     # also save the HF checkpoint
                                                              # (input for gemma3-edge convert)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from gemma3_edge.quantize.vision import hf_vision_name

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden" / "vision"
SEED = 20250325

TEXT_CONFIG = {
    "vocab_size": None,  # set from the vocabulary
    "hidden_size": 96,
    "intermediate_size": 160,
    "num_hidden_layers": 6,  # layers 0-4 slide, layer 5 is global (Gemma 3's 5:1 pattern)
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    # Smaller than one image (256 tokens), so the image's bidirectional span and the sliding
    # window both limit attention.
    "sliding_window": 64,
    "max_position_embeddings": 4096,
    "query_pre_attn_scalar": 32,
    "rms_norm_eps": 1e-6,
    "rope_local_base": 10000.0,
    "rope_global_base": 1000000.0,
    "rope_global_linear_factor": 8.0,  # as Gemma 3 4B, 12B and 27B
}

VISION_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 80,  # not a multiple of 32, like the real 4304: ffn_down stays float
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 128,
    "patch_size": 2,  # 64 x 64 patches, as 896 / 14 in the real tower
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}
MM_TOKENS_PER_IMAGE = 256
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]

SPECIAL_PIECES = ["<pad>", "<eos>", "<bos>", "<unk>"]
CONTROL_PIECES = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
# Characters of the test prompts (Pan & Scan's "Here is the original image ..." included) and
# a few merges; every multi-character piece is the merge of two shorter pieces.
CHARACTERS = list("abcdefghijklmnopqrstuvwxyzDHW.,?!'") + ["▁"]
MERGES = ["▁a", "he", "▁the", "▁t", "th", "in", "er", "re", "an", "on", "▁i", "is", "▁is", "▁o", "or"]
USER_DEFINED = ["\n", "\n\n"]  # whole pieces, as in Gemma's vocabulary


# Vocabulary and weights (numpy only) ----------------------------------------------------------


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and SentencePiece types of the tiny model's vocabulary."""
    pieces = list(SPECIAL_PIECES)
    types = [3, 3, 3, 2]  # control, control, control, unknown
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    for piece in CONTROL_PIECES:
        pieces.append(piece)
        types.append(3)
    for piece in USER_DEFINED:
        pieces.append(piece)
        types.append(4)
    for piece in CHARACTERS + MERGES:
        pieces.append(piece)
        types.append(1)
    scores = [0.0] * len(pieces)
    for i, kind in enumerate(types):
        if kind == 1:
            scores[i] = -float(i)  # earlier pieces merge first
    return pieces, scores, types


class _Uniform:
    """Uniform floats from PCG64's raw 64-bit output. Raw output involves none of numpy's
    floating-point distribution code, which may change between numpy releases."""

    def __init__(self, seed: int) -> None:
        self.bits = np.random.PCG64(seed)

    def draw(self, shape: tuple[int, ...], scale: float, offset: float = 0.0) -> np.ndarray:
        n = int(np.prod(shape))
        raw = self.bits.random_raw(n).astype(np.uint64)
        unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
        # Uniform on [-scale * sqrt(3), scale * sqrt(3)) has standard deviation `scale`.
        values = offset + (unit * 2.0 - 1.0) * scale * np.sqrt(3.0)
        return values.astype(np.float32).reshape(shape)


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """Random weights under transformers 5's Gemma3ForConditionalGeneration names (float32).

    Gemma RMSNorm weights w are stored as transformers uses them, as (1 + w) multipliers.
    """
    draw = _Uniform(seed).draw
    t, v = TEXT_CONFIG, VISION_CONFIG
    vocab = len(vocabulary()[0])
    d, width, ff = t["hidden_size"], v["hidden_size"], v["intermediate_size"]
    patch, n_patches = v["patch_size"], (v["image_size"] // v["patch_size"]) ** 2
    w: dict[str, np.ndarray] = {}

    tower = "model.vision_tower."
    w[tower + "embeddings.patch_embedding.weight"] = draw((width, 3, patch, patch), (3 * patch * patch) ** -0.5)
    w[tower + "embeddings.patch_embedding.bias"] = draw((width,), 0.1)
    w[tower + "embeddings.position_embedding.weight"] = draw((n_patches, width), 0.5)
    for i in range(v["num_hidden_layers"]):
        b = f"{tower}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            w[b + norm + ".weight"] = draw((width,), 0.2, offset=1.0)
            w[b + norm + ".bias"] = draw((width,), 0.1)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[b + f"self_attn.{proj}.weight"] = draw((width, width), width**-0.5)
            w[b + f"self_attn.{proj}.bias"] = draw((width,), 0.1)
        w[b + "mlp.fc1.weight"] = draw((ff, width), width**-0.5)
        w[b + "mlp.fc1.bias"] = draw((ff,), 0.1)
        w[b + "mlp.fc2.weight"] = draw((width, ff), ff**-0.5)
        w[b + "mlp.fc2.bias"] = draw((width,), 0.1)
    w[tower + "post_layernorm.weight"] = draw((width,), 0.2, offset=1.0)
    w[tower + "post_layernorm.bias"] = draw((width,), 0.1)
    w["model.multi_modal_projector.mm_input_projection_weight"] = draw((width, d), width**-0.5)
    w["model.multi_modal_projector.mm_soft_emb_norm.weight"] = draw((width,), 0.2)

    lm = "model.language_model."
    w[lm + "embed_tokens.weight"] = draw((vocab, d), 0.5)
    q_dim, kv_dim = t["num_attention_heads"] * t["head_dim"], t["num_key_value_heads"] * t["head_dim"]
    for i in range(t["num_hidden_layers"]):
        b = f"{lm}layers.{i}."
        w[b + "self_attn.q_proj.weight"] = draw((q_dim, d), d**-0.5)
        w[b + "self_attn.k_proj.weight"] = draw((kv_dim, d), d**-0.5)
        w[b + "self_attn.v_proj.weight"] = draw((kv_dim, d), d**-0.5)
        w[b + "self_attn.o_proj.weight"] = draw((d, q_dim), q_dim**-0.5)
        w[b + "self_attn.q_norm.weight"] = draw((t["head_dim"],), 0.2)
        w[b + "self_attn.k_norm.weight"] = draw((t["head_dim"],), 0.2)
        w[b + "mlp.gate_proj.weight"] = draw((t["intermediate_size"], d), d**-0.5)
        w[b + "mlp.up_proj.weight"] = draw((t["intermediate_size"], d), d**-0.5)
        w[b + "mlp.down_proj.weight"] = draw((d, t["intermediate_size"]), t["intermediate_size"] ** -0.5)
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            w[b + norm + ".weight"] = draw((d,), 0.2)
    w[lm + "norm.weight"] = draw((d,), 0.2)
    return w


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    """sha256 over the names and bytes of the weights, to detect a changed generator."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    return digest.hexdigest()


# GGUF writers (numpy and gguf-py only) --------------------------------------------------------


def _add(writer, name: str, data: np.ndarray, weight_type=None) -> None:
    """Add a float32 tensor, stored as weight_type (F32 when None, or when the rows do not
    split into whole blocks of that type)."""
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if weight_type is None or weight_type == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data)
    elif weight_type == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        block = gguf.GGML_QUANT_SIZES[weight_type][0]
        if data.shape[-1] % block != 0:
            writer.add_tensor(name, data.astype(np.float16))
            return
        raw = gguf.quants.quantize(data, weight_type)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=weight_type)


def write_text_gguf(path: str | Path, weights: dict[str, np.ndarray], weight_type=None) -> Path:
    """Write the language model in llama.cpp's gemma3 layout (RMSNorm weights as 1 + w)."""
    import gguf

    t = TEXT_CONFIG
    pieces, scores, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny-gemma3-vision-test")
    writer.add_context_length(t["max_position_embeddings"])
    writer.add_embedding_length(t["hidden_size"])
    writer.add_block_count(t["num_hidden_layers"])
    writer.add_feed_forward_length(t["intermediate_size"])
    writer.add_head_count(t["num_attention_heads"])
    writer.add_head_count_kv(t["num_key_value_heads"])
    writer.add_key_length(t["head_dim"])
    writer.add_value_length(t["head_dim"])
    writer.add_layer_norm_rms_eps(t["rms_norm_eps"])
    writer.add_rope_freq_base(t["rope_global_base"])
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(t["rope_global_linear_factor"])
    writer.add_sliding_window(t["sliding_window"])
    writer.add_float32("gemma3.attention.query_pre_attn_scalar", float(t["query_pre_attn_scalar"]))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_space_prefix(False)

    lm = "model.language_model."
    _add(writer, "token_embd.weight", weights[lm + "embed_tokens.weight"], weight_type)
    _add(writer, "output_norm.weight", 1.0 + weights[lm + "norm.weight"])
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    norms = {
        "input_layernorm": "attn_norm", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
        "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    }
    for i in range(t["num_hidden_layers"]):
        for hf, ours in names.items():
            _add(writer, f"blk.{i}.{ours}.weight", weights[f"{lm}layers.{i}.{hf}.weight"], weight_type)
        for hf, ours in norms.items():
            _add(writer, f"blk.{i}.{ours}.weight", 1.0 + weights[f"{lm}layers.{i}.{hf}.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def write_tokenizer_model(path: str | Path) -> Path:
    """Write the tiny vocabulary as a SentencePiece model file (tokenizer.model), the form in
    which a Hugging Face Gemma 3 checkpoint carries its tokenizer and the converter reads it."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for piece, score, kind in zip(*vocabulary()):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.pad_id, proto.trainer_spec.eos_id, proto.trainer_spec.bos_id = 0, 1, 2
    proto.trainer_spec.unk_id = 3
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    Path(path).write_bytes(proto.SerializeToString())
    return Path(path)


def write_hf_checkpoint(directory: str | Path, dtype: str = "float32") -> Path:
    """Save the tiny model with transformers' save_pretrained (in torch dtype `dtype`) and its
    tokenizer.model into directory: a Gemma3ForConditionalGeneration checkpoint for
    `gemma3-edge convert`. Needs torch and transformers."""
    import torch

    directory = Path(directory)
    model = hf_model(make_weights()).to(getattr(torch, dtype))
    model.save_pretrained(directory)
    write_tokenizer_model(directory / "tokenizer.model")
    return directory


def write_mmproj_gguf(path: str | Path, tensors: dict[str, np.ndarray], vision_config: dict, text_hidden_size: int,
                      mm_tokens_per_image: int = 256, image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
                      weight_type=None, projection_type="F16") -> Path:
    """Write the vision tower and projector of a Gemma3ForConditionalGeneration checkpoint as a
    llama.cpp mmproj file.

    tensors maps transformers names to float32 arrays; other tensors are skipped. As llama.cpp
    does: the soft-token RMSNorm weight is stored as 1 + w, the patch and position embeddings
    stay F32 and the input projection is F16 (projection_type, "F16" or "F32"). weight_type
    (None: F32) applies to the other matrices whose rows split into whole blocks; biases and
    norms stay F32.
    """
    import gguf

    v = vision_config
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name("tiny-gemma3-vision-test mmproj")
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.GEMMA3)
    writer.add_vision_projection_dim(text_hidden_size)
    writer.add_vision_image_size(v["image_size"])
    writer.add_vision_patch_size(v["patch_size"])
    writer.add_vision_embedding_length(v["hidden_size"])
    writer.add_vision_feed_forward_length(v["intermediate_size"])
    writer.add_vision_block_count(v["num_hidden_layers"])
    writer.add_vision_head_count(v["num_attention_heads"])
    writer.add_vision_attention_layernorm_eps(v.get("layer_norm_eps", 1e-6))
    writer.add_vision_image_mean(list(image_mean))
    writer.add_vision_image_std(list(image_std))
    # llama.cpp's clip.use_gelu selects ggml_gelu, the tanh approximation. The activation name
    # is stored as well, so a checkpoint with exact ("gelu") activation runs with erf.
    hidden_act = v.get("hidden_act", "gelu_pytorch_tanh")
    writer.add_vision_use_gelu(True)
    writer.add_string("gemma3_edge.vision.hidden_act", hidden_act)
    patches_per_side = v["image_size"] // v["patch_size"]
    tokens_per_side = int(round(mm_tokens_per_image**0.5))
    scale_factor = patches_per_side // tokens_per_side
    if scale_factor != 4:  # llama.cpp's default; it writes the key only for other values
        writer.add_vision_projector_scale_factor(scale_factor)

    for name in sorted(tensors):
        ours = hf_vision_name(name)
        if ours is None:
            continue
        data = np.asarray(tensors[name], dtype=np.float32)
        if ours == "mm.soft_emb_norm.weight":
            _add(writer, ours, 1.0 + data)
        elif ours.startswith(("v.patch_embd", "v.position_embd")) or data.ndim == 1:
            _add(writer, ours, data)
        elif ours == "mm.input_projection.weight":
            _add(writer, ours, data, gguf.GGMLQuantizationType[projection_type])
        else:
            _add(writer, ours, data, weight_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def write_model(out_dir: str | Path, weight_type=None, vision_weight_type=None, projection_type: str = "F32",
                seed: int = SEED, suffix: str = "") -> tuple[Path, Path]:
    """Write tiny-gemma3-vision{suffix}.gguf and tiny-gemma3-vision{suffix}-mmproj.gguf into
    out_dir and return their paths.

    The input projection is F32 by default (llama.cpp writes F16), so that the default files
    contain the goldens' weights exactly.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = make_weights(seed)
    text = write_text_gguf(out_dir / f"tiny-gemma3-vision{suffix}.gguf", weights, weight_type)
    mmproj = write_mmproj_gguf(out_dir / f"tiny-gemma3-vision{suffix}-mmproj.gguf", weights, VISION_CONFIG,
                               TEXT_CONFIG["hidden_size"], MM_TOKENS_PER_IMAGE, weight_type=vision_weight_type,
                               projection_type=projection_type)
    return text, mmproj


# SigLIP as Gemma 3 4B, 12B and 27B configure it (transformers' Gemma3Config defaults).
FULL_VISION_CONFIG = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 896,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}


def write_full_size_mmproj(path: str | Path, text_hidden_size: int = 2560, weight_type=None, seed: int = SEED) -> Path:
    """Write a mmproj file with random weights at the real SigLIP shapes (about 420M
    parameters; 2560 is Gemma 3 4B's width), one tensor at a time so memory stays near one
    tensor. weight_type as in write_mmproj_gguf (None: F32, about 1.7 GB)."""
    v = FULL_VISION_CONFIG
    draw = _Uniform(seed).draw
    width, ff, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    n_patches = (v["image_size"] // patch) ** 2
    shapes = {
        "model.vision_tower.embeddings.patch_embedding.weight": ((width, 3, patch, patch), (3 * patch * patch) ** -0.5, 0.0),
        "model.vision_tower.embeddings.patch_embedding.bias": ((width,), 0.1, 0.0),
        "model.vision_tower.embeddings.position_embedding.weight": ((n_patches, width), 0.5, 0.0),
        "model.vision_tower.post_layernorm.weight": ((width,), 0.2, 1.0),
        "model.vision_tower.post_layernorm.bias": ((width,), 0.1, 0.0),
        "model.multi_modal_projector.mm_input_projection_weight": ((width, text_hidden_size), width**-0.5, 0.0),
        "model.multi_modal_projector.mm_soft_emb_norm.weight": ((width,), 0.2, 0.0),
    }
    for i in range(v["num_hidden_layers"]):
        b = f"model.vision_tower.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[b + norm + ".weight"] = ((width,), 0.2, 1.0)
            shapes[b + norm + ".bias"] = ((width,), 0.1, 0.0)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[b + f"self_attn.{proj}.weight"] = ((width, width), width**-0.5, 0.0)
            shapes[b + f"self_attn.{proj}.bias"] = ((width,), 0.1, 0.0)
        shapes[b + "mlp.fc1.weight"] = ((ff, width), width**-0.5, 0.0)
        shapes[b + "mlp.fc1.bias"] = ((ff,), 0.1, 0.0)
        shapes[b + "mlp.fc2.weight"] = ((width, ff), ff**-0.5, 0.0)
        shapes[b + "mlp.fc2.bias"] = ((width,), 0.1, 0.0)

    class _Lazy(dict):
        # Draws each tensor when the writer requests it, in sorted-name order.
        def __getitem__(self, name):
            shape, scale, offset = shapes[name]
            return draw(shape, scale, offset)

    tensors = _Lazy.fromkeys(shapes)
    return write_mmproj_gguf(path, tensors, v, text_hidden_size, 256, weight_type=weight_type)


# Test images (numpy and Pillow) ---------------------------------------------------------------


def sample_images() -> dict:
    """Deterministic synthetic images: smooth colour fields with edges, in sizes that cover a
    square, a wide and a tall image (both wide enough for Pan & Scan), an RGBA and a grayscale
    image."""
    from PIL import Image

    def field(width: int, height: int, phase: float) -> np.ndarray:
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        r = 127.5 + 127.5 * np.sin(x / (7.0 + phase) + y / 23.0)
        g = 255.0 * (x + y) / (width + height)
        b = np.where(((x // 37) + (y // 29)) % 2 == 0, 40.0 + phase * 20, 215.0)
        return np.clip(np.stack([r, g, b], axis=-1).round(), 0, 255).astype(np.uint8)

    rgba = np.concatenate([field(150, 110, 3.0), (np.arange(150 * 110) % 256).reshape(110, 150, 1).astype(np.uint8)],
                          axis=-1)
    return {
        "square": Image.fromarray(field(200, 180, 0.0)),
        "wide": Image.fromarray(field(900, 300, 1.0)),  # aspect 3: Pan & Scan makes 3 crops
        "tall": Image.fromarray(field(300, 640, 2.0)),  # aspect 2.13: 2 crops
        "rgba": Image.fromarray(rgba, "RGBA"),
        "gray": Image.fromarray(field(96, 140, 4.0)[:, :, 1], "L"),
    }


# Goldens (torch and transformers) --------------------------------------------------------------

# (name, prompt text with one <start_of_image> per image, image names, Pan & Scan)
CASES = [
    ("one_image", "describe <start_of_image> in a word.", ["square"], False),
    ("two_images", "a <start_of_image> then <start_of_image> is it the same?", ["rgba", "gray"], False),
    ("pan_and_scan", "what is in <start_of_image> here?", ["wide"], True),
    ("pan_and_scan_tall", "<start_of_image> and <start_of_image>", ["tall", "square"], True),
]
# Goldens keep the logits of every 9th position and of the last one, every 61st row of the vision
# tower's output (a prime stride, so rows of every patch column are kept) and every 4th soft token.
LOGIT_ROW_STRIDE = 9
TOWER_ROW_STRIDE = 61
SOFT_TOKEN_STRIDE = 4


# Gemma3Processor's defaults for the Pan & Scan options (transformers 5.25, processing_gemma3.py).
PAN_AND_SCAN_DEFAULTS = {"pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                         "pan_and_scan_min_ratio_to_activate": 1.2}


def _patch_float64() -> None:
    """Keep transformers' Gemma 3 and SigLIP in float64 end to end.

    transformers 5.25 computes Gemma's RMSNorm, the RoPE angles and both attention softmaxes
    in float32 even in a float64 model. Each replacement computes in float64 for float64 input
    and calls the original otherwise.
    """
    import torch
    from transformers.models.gemma3 import modeling_gemma3 as gemma3
    from transformers.models.siglip import modeling_siglip as siglip

    if getattr(gemma3, "_vision_golden_patched", False):
        return
    original_norm = gemma3.Gemma3RMSNorm.forward

    def rms_norm_forward(self, x):
        if x.dtype != torch.float64:
            return original_norm(self, x)
        normalized = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return normalized * (1.0 + self.weight.to(torch.float64))

    original_rotary = gemma3.Gemma3RotaryEmbedding.forward

    def rotary_forward(self, x, position_ids, layer_type):
        if x.dtype != torch.float64:
            return original_rotary(self, x, position_ids, layer_type)
        parameters = self.config.rope_parameters[layer_type]
        dim = self.config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
        inv_freq = 1.0 / (parameters["rope_theta"] ** exponents)
        if parameters.get("rope_type") == "linear":
            inv_freq = inv_freq / parameters["factor"]
        angles = position_ids[..., None].to(torch.float64) * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def softmax64(module_globals, original):
        def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
            if query.dtype != torch.float64 or kwargs.get("softcap") is not None:
                return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
            if "repeat_kv" in module_globals:
                key = module_globals["repeat_kv"](key, module.num_key_value_groups)
                value = module_globals["repeat_kv"](value, module.num_key_value_groups)
            scores = torch.matmul(query, key.transpose(2, 3)) * scaling
            if attention_mask is not None:
                scores = scores + attention_mask
            weights = torch.softmax(scores, dim=-1)
            return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights
        return attention_forward

    gemma3.Gemma3RMSNorm.forward = rms_norm_forward
    gemma3.Gemma3RotaryEmbedding.forward = rotary_forward
    gemma3.eager_attention_forward = softmax64(vars(gemma3), gemma3.eager_attention_forward)
    siglip.eager_attention_forward = softmax64(vars(siglip), siglip.eager_attention_forward)
    gemma3._vision_golden_patched = True


def hf_config():
    from transformers import Gemma3Config

    t, v = TEXT_CONFIG, VISION_CONFIG
    pieces = vocabulary()[0]
    text = {
        "vocab_size": len(pieces), "hidden_size": t["hidden_size"], "intermediate_size": t["intermediate_size"],
        "num_hidden_layers": t["num_hidden_layers"], "num_attention_heads": t["num_attention_heads"],
        "num_key_value_heads": t["num_key_value_heads"], "head_dim": t["head_dim"],
        "sliding_window": t["sliding_window"], "max_position_embeddings": t["max_position_embeddings"],
        "query_pre_attn_scalar": t["query_pre_attn_scalar"], "rms_norm_eps": t["rms_norm_eps"],
        "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": t["rope_local_base"]},
            "full_attention": {"rope_type": "linear", "factor": t["rope_global_linear_factor"],
                               "rope_theta": t["rope_global_base"]},
        },
    }
    vision = dict(v, vision_use_head=False)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
                        boi_token_index=pieces.index("<start_of_image>"),
                        eoi_token_index=pieces.index("<end_of_image>"),
                        image_token_index=pieces.index("<image_soft_token>"))


def hf_model(weights: dict[str, np.ndarray]):
    """transformers' Gemma3ForConditionalGeneration (float32, eager attention) with the weights."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    config = hf_config()
    config._attn_implementation = "eager"
    model = Gemma3ForConditionalGeneration(config)
    state = {name: torch.from_numpy(array.copy()) for name, array in weights.items()}
    state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def hf_processor(text_gguf: Path):
    """Gemma3Processor over the PIL image processor (size from the vision config) and the tiny
    vocabulary, loaded from the text GGUF as transformers loads Gemma tokenizers from GGUF."""
    from transformers import AutoTokenizer, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(
        text_gguf.parent, gguf_file=text_gguf.name,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    size = VISION_CONFIG["image_size"]
    image_processor = Gemma3ImageProcessorPil(
        size={"height": size, "width": size}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD, resample=2,
        rescale_factor=1 / 255, do_rescale=True, do_normalize=True, do_resize=True,
    )
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                           image_seq_length=MM_TOKENS_PER_IMAGE)


def make_goldens(out_dir: Path, threads: int) -> None:
    import tempfile

    import torch
    import transformers

    torch.set_num_threads(threads)
    started = time.time()
    weights = make_weights()
    with tempfile.TemporaryDirectory() as tmp:
        text_gguf, _ = write_model(tmp)
        processor = hf_processor(text_gguf)
    model32 = hf_model(weights)
    _patch_float64()
    model64 = hf_model(weights).to(torch.float64)
    images = sample_images()
    arrays: dict[str, np.ndarray] = {}
    meta = {"cases": [], "weights_sha256": weights_digest(weights), "seed": SEED,
            "text_config": TEXT_CONFIG, "vision_config": VISION_CONFIG,
            "mm_tokens_per_image": MM_TOKENS_PER_IMAGE, "logit_row_stride": LOGIT_ROW_STRIDE,
            "tower_row_stride": TOWER_ROW_STRIDE, "soft_token_stride": SOFT_TOKEN_STRIDE, "float32_gap": {}}
    gaps = {"tower": 0.0, "soft_tokens": 0.0, "logits": 0.0}

    def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).abs().max() / b.double().abs().max())

    for name, text, image_names, pan_and_scan in CASES:
        inputs = processor(text=text, images=[[images[n] for n in image_names]], return_tensors="pt",
                           do_pan_and_scan=pan_and_scan)
        ids = inputs["input_ids"][0]
        pixels = inputs["pixel_values"]
        with torch.no_grad():
            tower64 = model64.model.vision_tower(pixel_values=pixels.double()).last_hidden_state
            soft64 = model64.model.multi_modal_projector(tower64)
            logits64 = model64(input_ids=inputs["input_ids"], pixel_values=pixels.double(),
                               token_type_ids=inputs["token_type_ids"], attention_mask=inputs["attention_mask"],
                               use_cache=False).logits[0]
            tower32 = model32.model.vision_tower(pixel_values=pixels).last_hidden_state
            soft32 = model32.model.multi_modal_projector(tower32)
            logits32 = model32(**inputs, use_cache=False).logits[0]
        gaps["tower"] = max(gaps["tower"], relative_gap(tower32, tower64))
        gaps["soft_tokens"] = max(gaps["soft_tokens"], relative_gap(soft32, soft64))
        gaps["logits"] = max(gaps["logits"], relative_gap(logits32, logits64))
        n = len(ids)
        rows = sorted(set(range(0, n, LOGIT_ROW_STRIDE)) | {n - 1})
        pixel_array = pixels.numpy().astype(np.float32)
        arrays[f"{name}/ids"] = ids.numpy().astype(np.int32)
        arrays[f"{name}/token_type_ids"] = inputs["token_type_ids"][0].numpy().astype(np.int8)
        # Gemma3Processor drops num_crops from its output, so ask its image processor.
        crops = processor.image_processor([images[n] for n in image_names], do_pan_and_scan=pan_and_scan,
                                          **PAN_AND_SCAN_DEFAULTS)["num_crops"]
        arrays[f"{name}/num_crops"] = np.asarray(crops, np.int32).reshape(-1)
        # Pixel values are (level / 255 - mean) / std for uint8 levels: the levels are stored, and
        # the sha256 of the float32 values checks the arithmetic bit for bit.
        levels = np.rint((pixel_array * np.float32(IMAGE_STD[0]) + np.float32(IMAGE_MEAN[0])) * 255.0)
        arrays[f"{name}/pixel_levels"] = levels.astype(np.uint8)
        arrays[f"{name}/tower_rows"] = tower64[:, ::TOWER_ROW_STRIDE].numpy().astype(np.float32)
        arrays[f"{name}/soft_tokens"] = soft64[:, ::SOFT_TOKEN_STRIDE].numpy().astype(np.float32)
        arrays[f"{name}/logit_positions"] = np.asarray(rows, np.int32)
        arrays[f"{name}/logits"] = logits64[rows].numpy().astype(np.float32)
        meta["cases"].append({"name": name, "text": text, "images": image_names, "pan_and_scan": pan_and_scan,
                              "n_tokens": n, "n_images": int(pixels.shape[0]),
                              "pixel_sha256": hashlib.sha256(pixel_array.tobytes()).hexdigest()})
        print(f"{name}: {n} tokens, {pixels.shape[0]} images, {time.time() - started:.0f} s", flush=True)

    meta["float32_gap"] = gaps
    meta["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__,
                        "numpy": np.__version__, "pillow": __import__("PIL").__version__}
    meta["reference"] = ("transformers Gemma3ForConditionalGeneration, eager attention, float64 with the float32 "
                         "RMSNorm, RoPE angles and softmaxes replaced by float64; processor Gemma3Processor with "
                         "Gemma3ImageProcessorPil")
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "goldens.npz", **arrays)
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out_dir} in {time.time() - started:.0f} s; float32 gaps {gaps}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the GGUF files (and --hf checkpoint)")
    parser.add_argument("--hf", action="store_true",
                        help="also save the transformers checkpoint and its tokenizer.model in --out/hf")
    parser.add_argument("--goldens", action="store_true", help=f"write the goldens to {GOLDEN_DIR}")
    parser.add_argument("--golden-dir", type=Path, default=GOLDEN_DIR, help="folder for --goldens")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = parser.parse_args()
    if not args.out and not args.goldens:
        parser.error("give --out DIR, --goldens or both")
    if args.out:
        text, mmproj = write_model(args.out)
        print(f"wrote {text} and {mmproj}")
        if args.hf:
            print(f"wrote {write_hf_checkpoint(args.out / 'hf')}")
    if args.goldens:
        make_goldens(args.golden_dir, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
