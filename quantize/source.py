"""Conversion inputs: a Hugging Face Gemma 3 checkpoint directory or a GGUF file.

Both are read into one description: the gemma3.* hyperparameters, the SentencePiece vocabulary
as llama.cpp stores it (tokenizer.ggml.*), and the text model's tensors under GGUF names. Each
tensor loads as float32, with Gemma's (1 + w) already folded into the RMSNorm weights as the
runtime and llama.cpp expect.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger("gemma3_edge.quantize")

# Layer i is global when (i + 1) % 6 == 0 in every Gemma 3 size; the runtime assumes it.
SLIDING_PATTERN = 6

# Gemma3TextConfig defaults (transformers 5.25), for keys a config.json leaves out: the
# released multimodal checkpoints list only the keys that differ from them.
TEXT_CONFIG_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
    "sliding_window": 4096, "query_pre_attn_scalar": 256, "max_position_embeddings": 131072,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
}

SUPPORTED_ARCHITECTURES = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")

# GGUF token types (the SentencePiece piece types use the same numbers).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

NORM_SUFFIXES = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm",
                 "post_ffw_norm", "output_norm")


class UnsupportedModelError(ValueError):
    """The input is not a Gemma 3 text model this converter can handle."""


def tensor_role(name: str) -> str:
    """'embedding', 'attention', 'feed_forward' or 'norm' for a GGUF tensor name."""
    if name == "token_embd.weight":
        return "embedding"
    base = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    if base in NORM_SUFFIXES:
        return "norm"
    if base.startswith("attn_"):
        return "attention"
    if base.startswith("ffn_"):
        return "feed_forward"
    return "other"


@dataclass
class SourceTensor:
    """One tensor of the text model: GGUF name, numpy shape [rows, cols] or [n], and loaders."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]                # float32, norms folded
    source_type: str = "F32"                      # storage type in the input
    raw: Callable[[], np.ndarray] | None = None   # the input's bytes, for GGUF inputs

    @property
    def role(self) -> str:
        return tensor_role(self.name)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Vocabulary:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos_id: int = 2
    eos_id: int = 1
    unk_id: int = 3
    pad_id: int = 0
    chat_template: str | None = None
    extra: dict = field(default_factory=dict)  # further tokenizer.ggml.* keys from a GGUF input


@dataclass
class Source:
    path: Path
    kind: str                       # "hf" or "gguf"
    name: str
    hparams: dict                   # gemma3.* keys without the prefix -> value
    vocab: Vocabulary
    tensors: list[SourceTensor]
    notes: list[str] = field(default_factory=list)
    input_files: list[Path] = field(default_factory=list)

    def tensor(self, name: str) -> SourceTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def n_layers(self) -> int:
        return int(self.hparams["block_count"])


def open_source(path: str | Path) -> Source:
    path = Path(path)
    if path.is_dir():
        return _open_hf(path)
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return _open_gguf(path)
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}) nor a Hugging Face checkpoint directory")
    raise FileNotFoundError(f"input not found: {path}")


# Hugging Face checkpoints ----------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

# Bits per element of every dtype the safetensors format defines, to check each entry's byte
# range against its shape even for dtypes the converter does not load (vision towers, buffers).
_SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
                     "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64,
                     "U64": 64, "F64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

# Largest JSON header accepted. Real checkpoints have headers of a few hundred KB.
_MAX_HEADER_BYTES = 100 * 2**20


class SafetensorsError(ValueError):
    """A .safetensors file whose header is damaged or contradicts its data."""


def _is_count(value) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass and is not a count


class _SafetensorsFile:
    """A memory-mapped .safetensors file (8-byte header length, JSON header, raw data).

    Opening the file validates the header. Every entry needs a dtype string, a shape of
    non-negative integers and data_offsets inside the data region whose span matches the shape.
    So load() never reads past the file or allocates more than the tensor's bytes.
    """

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                self._fail(f"the file has {size} bytes, fewer than the 8-byte header length; "
                           "it is empty or truncated")
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER_BYTES:
                self._fail(f"safetensors header of {length} bytes is implausible "
                           f"(the limit is {_MAX_HEADER_BYTES}); the file is damaged or not safetensors")
            if 8 + length > size:
                self._fail(f"the header length says {length} bytes but only {size - 8} follow it; "
                           "the file is truncated")
            text = f.read(length)
        try:
            header = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError as error:
            self._fail(f"the header is not UTF-8 (byte {error.start}); the file is damaged or not safetensors")
        except (json.JSONDecodeError, RecursionError) as error:
            self._fail(f"the header is not valid JSON ({error}); the file is damaged or not safetensors")
        if not isinstance(header, dict):
            self._fail(f"the header is a JSON {type(header).__name__}, expected an object that maps "
                       "tensor names to {dtype, shape, data_offsets}")
        header.pop("__metadata__", None)
        self.data_start = 8 + length
        data_size = size - self.data_start
        for name, entry in header.items():
            self._check_entry(name, entry, data_size)
        self.entries = header
        self._map = np.memmap(path, dtype=np.uint8, mode="r")

    def _fail(self, message: str):
        raise SafetensorsError(f"{self.path}: {message}")

    def _check_entry(self, name: str, entry, data_size: int) -> None:
        where = f"tensor {name}"
        if not isinstance(entry, dict):
            self._fail(f"{where}: the entry is a JSON {type(entry).__name__}, expected an object "
                       "with dtype, shape and data_offsets")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            self._fail(f"{where}: field dtype is {dtype!r}, expected a string such as F32, F16 or BF16")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            self._fail(f"{where}: field shape is {shape!r}, expected a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            self._fail(f"{where}: field data_offsets is {offsets!r}, expected [begin, end] "
                       "with non-negative integers")
        begin, end = offsets
        if not begin <= end <= data_size:
            self._fail(f"{where}: data_offsets [{begin}, {end}] are not an ordered range inside the "
                       f"{data_size} data bytes; the header is damaged or the file truncated")
        bits = _SAFETENSORS_BITS.get(dtype)
        if bits is not None:
            needed = (math.prod(shape) * bits + 7) // 8
            if end - begin != needed:
                self._fail(f"{where}: shape {shape} of {dtype} needs {needed} bytes, but data_offsets "
                           f"[{begin}, {end}] hold {end - begin}")

    def load(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype = entry["dtype"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name} has dtype {dtype}; expected F32, F16 or BF16")
        begin, end = entry["data_offsets"]
        raw = self._map[self.data_start + begin:self.data_start + end]
        array = raw.view(_SAFETENSORS_DTYPES[dtype]).reshape(entry["shape"])
        if dtype == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(np.float32)


def _text_config(config: dict) -> dict:
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures) and model_type not in ("gemma3", "gemma3_text"):
        found = ", ".join(architectures) or model_type or "none"
        raise UnsupportedModelError(
            f"architecture {found} is not supported; this converter handles Gemma 3 checkpoints "
            f"({', '.join(SUPPORTED_ARCHITECTURES)})")
    text = dict(config.get("text_config") or config)
    merged = dict(TEXT_CONFIG_DEFAULTS)
    merged.update({k: v for k, v in text.items() if v is not None})
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if text.get(key):
            raise UnsupportedModelError(f"{key} = {text[key]} is set; Gemma 3 does not use it and the runtime has no support")
    activation = text.get("hidden_activation", "gelu_pytorch_tanh")
    if activation != "gelu_pytorch_tanh":
        raise UnsupportedModelError(f"hidden_activation {activation!r} is not supported (Gemma 3 uses gelu_pytorch_tanh)")
    return merged


def _rope_settings(text: dict) -> tuple[float, float, float]:
    """(global base, sliding base, global linear scaling factor) from either config style."""
    params = text.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        full = params["full_attention"] or {}
        sliding = params.get("sliding_attention") or {}
        scaling = full
        base_global = float(full.get("rope_theta", text["rope_theta"]))
        base_local = float(sliding.get("rope_theta", text["rope_local_base_freq"]))
    else:
        scaling = text.get("rope_scaling") or {}
        base_global = float(text.get("rope_theta", TEXT_CONFIG_DEFAULTS["rope_theta"]))
        base_local = float(text.get("rope_local_base_freq", TEXT_CONFIG_DEFAULTS["rope_local_base_freq"]))
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    factor = 1.0
    if rope_type == "linear":
        factor = float(scaling.get("factor", 1.0))
    elif rope_type not in ("default", None):
        raise UnsupportedModelError(f"RoPE scaling type {rope_type!r} is not supported (expected 'linear' or none)")
    return base_global, base_local, factor


def _check_layer_types(text: dict, n_layers: int) -> None:
    layer_types = text.get("layer_types")
    if not layer_types:
        return
    expected = ["full_attention" if (i + 1) % SLIDING_PATTERN == 0 else "sliding_attention" for i in range(n_layers)]
    if list(layer_types) != expected:
        raise UnsupportedModelError(
            "layer_types does not follow Gemma 3's pattern of one global layer after every five sliding "
            "layers, which the runtime assumes")


def _hf_name(name: str) -> str | None:
    """GGUF name of a text-model tensor, None for a tensor to skip (vision tower, LM head)."""
    for prefix in ("model.language_model.", "language_model.model.", "model."):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            break
    else:
        return None
    if rest == "embed_tokens.weight":
        return "token_embd.weight"
    if rest == "norm.weight":
        return "output_norm.weight"
    match = re.fullmatch(r"layers\.(\d+)\.(.+)", rest)
    if not match:
        return None
    index, part = match.groups()
    table = {
        "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
        "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
        "self_attn.q_norm.weight": "attn_q_norm", "self_attn.k_norm.weight": "attn_k_norm",
        "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "post_attention_norm",
        "pre_feedforward_layernorm.weight": "ffn_norm", "post_feedforward_layernorm.weight": "post_ffw_norm",
        "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
    }
    if part not in table:
        return None
    return f"blk.{index}.{table[part]}.weight"


def _read_sentencepiece(directory: Path, n_rows: int) -> Vocabulary:
    """tokenizer.model plus added tokens, as llama.cpp's converter maps them (types, -1000 scores)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = directory / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the converter needs the SentencePiece model of the checkpoint")
    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    tokens, scores, types = [], [], []
    for piece in proto.pieces:
        tokens.append(piece.piece.encode("utf-8"))
        scores.append(float(piece.score))
        types.append(int(piece.type) if int(piece.type) in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL)

    config_path = directory / "tokenizer_config.json"
    chat_template = None
    if config_path.is_file():
        tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
        chat_template = tokenizer_config.get("chat_template")
        for key, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
            index = int(key)
            if index >= len(tokens):
                continue
            content = entry["content"]
            if entry.get("special"):
                types[index] = CONTROL
            else:
                # llama.cpp stores non-special added tokens with real spaces.
                content = content.replace("\u2581", " ")
                types[index] = USER_DEFINED
            tokens[index] = content.encode("utf-8")
            scores[index] = -1000.0
    template_path = directory / "chat_template.jinja"
    if chat_template is None and template_path.is_file():
        chat_template = template_path.read_text(encoding="utf-8")

    trainer = proto.trainer_spec
    vocab = Vocabulary(tokens, scores, types, bos_id=trainer.bos_id if trainer.bos_id >= 0 else 2,
                       eos_id=trainer.eos_id if trainer.eos_id >= 0 else 1,
                       unk_id=trainer.unk_id if trainer.unk_id >= 0 else 3,
                       pad_id=trainer.pad_id if trainer.pad_id >= 0 else 0, chat_template=chat_template)
    if n_rows > len(tokens):
        raise ValueError(f"the embedding has {n_rows} rows but tokenizer.model only {len(tokens)} pieces; "
                         "the checkpoint and its tokenizer do not match")
    return vocab


def _open_hf(directory: Path) -> Source:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; pass a Hugging Face checkpoint directory or a GGUF file")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    text = _text_config(config)
    n_layers = int(text["num_hidden_layers"])
    _check_layer_types(text, n_layers)
    base_global, base_local, factor = _rope_settings(text)

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}; only safetensors checkpoints are supported")
    tensors: dict[str, tuple[_SafetensorsFile, str]] = {}
    skipped_vision = 0
    for file in files:
        st = _SafetensorsFile(file)
        for name in st.entries:
            gguf_name = _hf_name(name)
            if gguf_name is None:
                skipped_vision += "vision" in name or "multi_modal" in name
                continue
            tensors[gguf_name] = (st, name)
    if "token_embd.weight" not in tensors:
        raise UnsupportedModelError(f"{directory}: no embed_tokens tensor found; is this a Gemma 3 checkpoint?")

    embedding_file, embedding_name = tensors["token_embd.weight"]
    embedding_shape = embedding_file.entries[embedding_name]["shape"]
    if len(embedding_shape) != 2:
        raise UnsupportedModelError(f"{embedding_file.path}: tensor {embedding_name} has shape {embedding_shape}, "
                                    "expected [vocabulary, hidden size]")
    n_rows = embedding_shape[0]
    vocab = _read_sentencepiece(directory, 0)
    notes = []
    n_vocab = len(vocab.tokens)
    if n_rows < n_vocab:
        raise ValueError(f"the embedding has {n_rows} rows but the tokenizer {n_vocab} pieces; they must agree")
    if n_rows > n_vocab:
        notes.append(f"embedding rows {n_vocab}..{n_rows - 1} (image soft-token slots without tokenizer "
                     f"pieces) are dropped, as llama.cpp's converter does")
    if skipped_vision:
        notes.append(f"the vision tower ({skipped_vision} tensors) is not part of the text model file; "
                     "convert() writes it to a separate mmproj file")

    d_model = int(text["hidden_size"])
    hparams = {
        "context_length": int(text["max_position_embeddings"]),
        "embedding_length": d_model,
        "block_count": n_layers,
        "feed_forward_length": int(text["intermediate_size"]),
        "attention.head_count": int(text["num_attention_heads"]),
        "attention.head_count_kv": int(text["num_key_value_heads"]),
        "attention.key_length": int(text["head_dim"]),
        "attention.value_length": int(text["head_dim"]),
        "attention.layer_norm_rms_epsilon": float(text["rms_norm_eps"]),
        "attention.sliding_window": int(text["sliding_window"]),
        "attention.query_pre_attn_scalar": float(text["query_pre_attn_scalar"]),
        "rope.freq_base": base_global,
        "rope.freq_base_swa": base_local,
    }
    if factor != 1.0:
        hparams["rope.scaling.type"] = "linear"
        hparams["rope.scaling.factor"] = factor

    def loader(st: _SafetensorsFile, name: str, gguf_name: str, rows: int | None):
        def load() -> np.ndarray:
            data = st.load(name)
            if rows is not None:
                data = data[:rows]
            data = np.ascontiguousarray(data, dtype=np.float32)
            if tensor_role(gguf_name) == "norm":
                data = data + np.float32(1.0)
            return data
        return load

    # Every file the conversion reads, so that no output path can replace one of them.
    tokenizer_files = [p for p in (directory / n for n in ("tokenizer.model", "tokenizer_config.json",
                                                           "chat_template.jinja")) if p.is_file()]
    source_tensors = []
    for gguf_name, (st, name) in tensors.items():
        shape = tuple(st.entries[name]["shape"])
        rows = None
        if gguf_name == "token_embd.weight":
            rows = n_vocab
            shape = (n_vocab, shape[1])
        source_tensors.append(SourceTensor(gguf_name, shape, loader(st, name, gguf_name, rows),
                                           source_type=st.entries[name]["dtype"]))
    source = Source(directory, "hf", config.get("_name_or_path") or directory.name, hparams, vocab,
                    _ordered(source_tensors, n_layers), notes, input_files=[config_path, *files, *tokenizer_files])
    _check_tensors(source)
    return source


def _ordered(tensors: list[SourceTensor], n_layers: int) -> list[SourceTensor]:
    order = {"token_embd.weight": (-1, 0), "output_norm.weight": (n_layers, 0)}

    def key(t: SourceTensor):
        if t.name in order:
            return order[t.name]
        index = int(t.name.split(".")[1])
        return (index, t.name)

    return sorted(tensors, key=key)


def _check_tensors(source: Source) -> None:
    """Reject a checkpoint that lacks tensors or has shapes the hyperparameters contradict."""
    h = source.hparams
    d, ff = h["embedding_length"], h["feed_forward_length"]
    q = h["attention.head_count"] * h["attention.key_length"]
    kv = h["attention.head_count_kv"] * h["attention.key_length"]
    hd = h["attention.key_length"]
    expected = {"output_norm.weight": (d,)}
    for i in range(source.n_layers):
        b = f"blk.{i}."
        expected.update({
            b + "attn_norm.weight": (d,), b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,),
            b + "post_attention_norm.weight": (d,), b + "ffn_norm.weight": (d,), b + "post_ffw_norm.weight": (d,),
            b + "attn_q.weight": (q, d), b + "attn_k.weight": (kv, d), b + "attn_v.weight": (kv, d),
            b + "attn_output.weight": (d, q), b + "ffn_gate.weight": (ff, d), b + "ffn_up.weight": (ff, d),
            b + "ffn_down.weight": (d, ff),
        })
    have = {t.name: t.shape for t in source.tensors}
    for name, shape in expected.items():
        if name not in have:
            raise UnsupportedModelError(f"{source.path}: tensor {name} is missing")
        if tuple(have[name]) != shape:
            raise UnsupportedModelError(f"{source.path}: tensor {name} has shape {have[name]}, expected {shape}")
    if have["token_embd.weight"][1] != d:
        raise UnsupportedModelError(f"{source.path}: token_embd.weight has width {have['token_embd.weight'][1]}, expected {d}")


# GGUF files ------------------------------------------------------------------------------------

def _field_value(field):
    import gguf

    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        if len(types) > 1 and types[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8")
    return field.parts[-1].tolist()[0]


def _open_gguf(path: Path) -> Source:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, KeyError) as error:
        if "GGMLQuantizationType" in str(error):
            raise ValueError(f"{path}: a tensor type is unknown to the gguf package ({error}); files with the "
                             "project's own types (per-channel int8/int4, SFP8) cannot be converted again, "
                             "convert from their source instead") from error
        raise ValueError(f"{path}: the gguf package cannot read this file ({error})") from error
    fields = {name: _field_value(f) for name, f in reader.fields.items()}
    arch = fields.get("general.architecture")
    if arch != "gemma3":
        raise UnsupportedModelError(f"{path}: architecture {arch!r} is not supported; the converter handles Gemma 3 ('gemma3') models")
    hparams = {k[len("gemma3."):]: v for k, v in fields.items() if k.startswith("gemma3.")}
    if fields.get("tokenizer.ggml.model") != "llama":
        raise UnsupportedModelError(f"{path}: tokenizer.ggml.model is {fields.get('tokenizer.ggml.model')!r}, expected 'llama'")
    extra = {k: v for k, v in fields.items() if k.startswith("tokenizer.") and k not in (
        "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template", "tokenizer.ggml.model")}
    vocab = Vocabulary(
        tokens=fields["tokenizer.ggml.tokens"], scores=[float(s) for s in fields["tokenizer.ggml.scores"]],
        types=[int(t) for t in fields["tokenizer.ggml.token_type"]],
        bos_id=int(fields.get("tokenizer.ggml.bos_token_id", 2)), eos_id=int(fields.get("tokenizer.ggml.eos_token_id", 1)),
        unk_id=int(fields.get("tokenizer.ggml.unknown_token_id", 3)), pad_id=int(fields.get("tokenizer.ggml.padding_token_id", 0)),
        chat_template=fields.get("tokenizer.chat_template"), extra=extra)

    tensors = []
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF ne is (cols, rows)
        type_name = t.tensor_type.name
        if t.name == "output.weight":
            continue  # Gemma 3 ties the LM head; the runtime ignores a separate one

        def load(t=t, shape=shape) -> np.ndarray:
            try:
                values = gguf.quants.dequantize(t.data, t.tensor_type)
            except NotImplementedError as error:
                raise ValueError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which the gguf package "
                                 "cannot dequantize") from error
            return np.ascontiguousarray(values, dtype=np.float32).reshape(shape)

        def raw(t=t) -> np.ndarray:
            return np.asarray(t.data).view(np.uint8).reshape(-1)

        tensors.append(SourceTensor(t.name, shape, load, source_type=type_name, raw=raw))
    source = Source(path, "gguf", fields.get("general.name") or path.stem, hparams, vocab,
                    _ordered(tensors, int(hparams["block_count"])), [], input_files=[path])
    source.metadata_general = {k: v for k, v in fields.items() if k.startswith("general.")}
    _check_tensors(source)
    return source
