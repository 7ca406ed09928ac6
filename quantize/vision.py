"""Gemma 3's vision tower from a Hugging Face checkpoint into a vision projector ("mmproj") GGUF.

The runtime loads the vision tower from its own file (Model(path, mmproj=...), --mmproj), in
the layout llama.cpp's convert_hf_to_gguf.py --mmproj writes for Gemma 3: general.architecture
"clip", clip.projector_type "gemma3", clip.vision.* sizes, tensors v.* and mm.*. convert()
writes that file next to the text model as OUT-mmproj.gguf (mmproj_path()) when the checkpoint
is a Gemma3ForConditionalGeneration. NOTE: loading the pair in llama.cpp was not tried, and a
project-only format (per-channel int8/int4, SFP8) would keep llama.cpp from loading it.

Storage follows llama.cpp (convert_hf_to_gguf.py, its Gemma 3 vision class): the patch and position
embeddings, biases and norms stay F32, and the input projection is F16 (F32 when the scheme is
f32). The encoder's matrices use the vision scheme: q8_0 (int8, blocks of 32) unless a float
preset or --vision chooses another. A matrix whose rows do not split into whole blocks (the MLP
down-projection of 4304 inputs) falls back as in the text model, to F16 for the block-32 types.
No calibration is run on the vision tower: its inputs are images, not the calibration text.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import gguf_file as gf
from .encode import encode_tensor
from .formats import FORMATS, Format, row_bytes
from .schemes import fitting_format, scheme_format
from .source import Source, UnsupportedModelError, _SafetensorsFile

log = logging.getLogger("gemma3_edge.quantize")

DEFAULT_SCHEME = "q8_0"
# Presets whose float format the vision tower keeps. Every other preset quantizes it with q8_0.
FLOAT_PRESETS = ("f32", "f16", "bf16")

# SiglipVisionConfig defaults (transformers 5.25), for keys a vision_config leaves out. The
# released Gemma 3 configs set every size explicitly.
SIGLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6,
                   "hidden_act": "gelu_pytorch_tanh"}
# Activations the runtime's encoder runs (src/cpp/vision.cpp read_activation).
SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu")
# Gemma3Config's mm_tokens_per_image default and Gemma 3's image normalisation (preprocessor_config.json).
DEFAULT_TOKENS_PER_IMAGE = 256
DEFAULT_IMAGE_MEAN = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)

_FIXED_NAMES = {
    "vision_tower.embeddings.patch_embedding": "v.patch_embd",
    "vision_tower.embeddings.position_embedding": "v.position_embd",
    "vision_tower.post_layernorm": "v.post_ln",
    "multi_modal_projector.mm_input_projection": "mm.input_projection",
    "multi_modal_projector.mm_soft_emb_norm": "mm.soft_emb_norm",
}
_LAYER_NAMES = {
    "layer_norm1": "ln1", "layer_norm2": "ln2", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.out_proj": "attn_out", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}


def hf_vision_name(name: str) -> str | None:
    """Map a vision tensor name of a transformers checkpoint to llama.cpp's mmproj name.

    Accepts the layouts transformers has written: "vision_tower.vision_model.*" (4.x releases),
    "model.vision_tower.vision_model.*" and "model.vision_tower.*" (5.x state dicts) and
    "vision_tower.*" (5.25 save_pretrained). Returns None for every other tensor, including
    SigLIP's pooling head, which Gemma 3 does not use.
    """
    if name.startswith("model."):
        name = name[len("model."):]
    name = name.replace("vision_tower.vision_model.", "vision_tower.")
    name = name.replace("mm_input_projection_weight", "mm_input_projection.weight")
    stem, _, suffix = name.rpartition(".")
    if stem in _FIXED_NAMES:
        return f"{_FIXED_NAMES[stem]}.{suffix}"
    prefix = "vision_tower.encoder.layers."
    if not stem.startswith(prefix):
        return None
    block, _, part = stem[len(prefix):].partition(".")
    if part not in _LAYER_NAMES:
        return None
    return f"v.blk.{block}.{_LAYER_NAMES[part]}.{suffix}"


def mmproj_path(output: str | Path) -> Path:
    """Return the vision projector path next to output: model.gguf -> model-mmproj.gguf."""
    output = Path(output)
    return output.with_name(f"{output.stem}-mmproj{output.suffix or '.gguf'}")


def vision_scheme(preset: str, override: str | None) -> str:
    """Choose the vision tower's scheme: override, else the preset's float format, else q8_0."""
    if override is not None:
        scheme_format(override)  # raises ValueError for an unknown name
        return override.lower()
    if preset in FLOAT_PRESETS:
        return preset
    if preset == "lossless":
        return "lossless"
    return DEFAULT_SCHEME


@dataclass
class VisionTower:
    """The vision tower of a Hugging Face checkpoint: sizes and where each mmproj tensor is."""

    directory: Path
    config: dict                   # SigLIP sizes, with SIGLIP_DEFAULTS filled in
    text_hidden_size: int
    tokens_per_image: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    tensors: dict[str, tuple[_SafetensorsFile, str]] = field(default_factory=dict)  # mmproj name -> source

    @property
    def pool_kernel(self) -> int:
        patches_per_side = self.config["image_size"] // self.config["patch_size"]
        return patches_per_side // round(self.tokens_per_image ** 0.5)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """mmproj name -> shape in transformers' (numpy) order."""
        c = self.config
        width, ff, patch = c["hidden_size"], c["intermediate_size"], c["patch_size"]
        n_patches = (c["image_size"] // patch) ** 2
        shapes = {"v.patch_embd.weight": (width, 3, patch, patch), "v.patch_embd.bias": (width,),
                  "v.position_embd.weight": (n_patches, width), "v.post_ln.weight": (width,),
                  "v.post_ln.bias": (width,), "mm.input_projection.weight": (width, self.text_hidden_size),
                  "mm.soft_emb_norm.weight": (width,)}
        for i in range(c["num_hidden_layers"]):
            b = f"v.blk.{i}."
            for part in ("ln1", "ln2"):
                shapes[f"{b}{part}.weight"] = shapes[f"{b}{part}.bias"] = (width,)
            for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
                shapes[f"{b}{part}.weight"] = (width, width)
                shapes[f"{b}{part}.bias"] = (width,)
            shapes[b + "ffn_up.weight"], shapes[b + "ffn_up.bias"] = (ff, width), (ff,)
            shapes[b + "ffn_down.weight"], shapes[b + "ffn_down.bias"] = (width, ff), (width,)
        return shapes


def _image_normalisation(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return DEFAULT_IMAGE_MEAN, DEFAULT_IMAGE_STD
    processor = json.loads(path.read_text(encoding="utf-8"))
    mean = tuple(float(x) for x in processor.get("image_mean", DEFAULT_IMAGE_MEAN))
    std = tuple(float(x) for x in processor.get("image_std", DEFAULT_IMAGE_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UnsupportedModelError(f"{path}: image_mean and image_std must have 3 values each and the std must be "
                                    f"positive, got {list(mean)} and {list(std)}")
    return mean, std


def open_vision_tower(source: Source) -> VisionTower | None:
    """Find and check the vision tower of a Hugging Face Gemma3ForConditionalGeneration input.

    Returns None for a text-only input (a Gemma3ForCausalLM checkpoint or a GGUF file). Raises
    UnsupportedModelError when the tower is incomplete or its sizes are ones the runtime cannot
    run, before any file is written.
    """
    if source.kind != "hf":
        return None
    directory = source.path
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if "vision_config" not in config:
        return None
    vision = dict(SIGLIP_DEFAULTS)
    vision.update({k: v for k, v in (config.get("vision_config") or {}).items() if v is not None})
    tower = VisionTower(directory, vision, int(source.hparams["embedding_length"]),
                        int(config.get("mm_tokens_per_image", DEFAULT_TOKENS_PER_IMAGE)),
                        *_image_normalisation(directory))
    for file in sorted(directory.glob("*.safetensors")):
        st = _SafetensorsFile(file)
        for name in st.entries:
            ours = hf_vision_name(name)
            if ours is not None:
                tower.tensors[ours] = (st, name)
    if not tower.tensors:
        raise UnsupportedModelError(f"{directory}: config.json has a vision_config but the safetensors files contain "
                                    "no vision tower tensors (vision_tower.*, multi_modal_projector.*)")
    _check_tower(tower)
    return tower


def _check_tower(tower: VisionTower) -> None:
    c = tower.config
    where = f"{tower.directory}: vision_config"
    if c["hidden_act"] not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedModelError(f"{where} hidden_act is {c['hidden_act']!r}; the runtime runs "
                                    f"{', '.join(SUPPORTED_ACTIVATIONS)}")
    if c["image_size"] % c["patch_size"] or c["hidden_size"] % c["num_attention_heads"]:
        raise UnsupportedModelError(f"{where}: image_size {c['image_size']} must be a multiple of patch_size "
                                    f"{c['patch_size']} and hidden_size {c['hidden_size']} a multiple of "
                                    f"num_attention_heads {c['num_attention_heads']}")
    patches_per_side = c["image_size"] // c["patch_size"]
    tokens_per_side = round(tower.tokens_per_image ** 0.5)
    if tokens_per_side ** 2 != tower.tokens_per_image or tokens_per_side < 1 or patches_per_side % tokens_per_side:
        raise UnsupportedModelError(
            f"{tower.directory}: mm_tokens_per_image {tower.tokens_per_image} must be the square of a number that "
            f"divides the {patches_per_side} patches per side, so that average pooling makes the image tokens")
    expected = tower.expected_shapes()
    for name, shape in expected.items():
        if name not in tower.tensors:
            raise UnsupportedModelError(f"{tower.directory}: vision tensor {name} (transformers name ending "
                                        f"{name.split('.', 1)[1]}) is missing")
        st, hf_name = tower.tensors[name]
        found = tuple(st.entries[hf_name]["shape"])
        if found != shape:
            raise UnsupportedModelError(f"{tower.directory}: tensor {hf_name} has shape {found}, expected {shape} "
                                        "from vision_config")
    extra = sorted(set(tower.tensors) - set(expected))
    if extra:
        raise UnsupportedModelError(f"{tower.directory}: vision tensors {extra[:3]} do not fit vision_config "
                                    f"(num_hidden_layers {c['num_hidden_layers']})")


def _lossless_format(tower: VisionTower, name: str) -> Format:
    """Return the tensor's safetensors dtype, which stores it exactly (F64 narrows to F32)."""
    st, hf_name = tower.tensors[name]
    return FORMATS.get(st.entries[hf_name]["dtype"], FORMATS["F32"])


def _tensor_format(tower: VisionTower, name: str, shape: tuple[int, ...], scheme: str) -> Format:
    if len(shape) == 1 or name.startswith(("v.patch_embd.", "v.position_embd.")):
        return FORMATS["F32"]
    if scheme == "lossless":
        return _lossless_format(tower, name)
    matrix_format = scheme_format(scheme)
    if name == "mm.input_projection.weight":
        return FORMATS["F32"] if matrix_format.name == "F32" else FORMATS["F16"]
    return fitting_format(matrix_format, shape[-1])


def _metadata(out: gf.GGUFOutput, tower: VisionTower, name: str) -> None:
    c = tower.config
    out.add("general.architecture", gf.STRING, "clip")
    out.add("general.type", gf.STRING, "mmproj")
    out.add("general.name", gf.STRING, f"{name} mmproj")
    out.add("clip.has_vision_encoder", gf.BOOL, True)
    out.add("clip.projector_type", gf.STRING, "gemma3")
    out.add("clip.vision.projection_dim", gf.UINT32, tower.text_hidden_size)
    out.add("clip.vision.image_size", gf.UINT32, int(c["image_size"]))
    out.add("clip.vision.patch_size", gf.UINT32, int(c["patch_size"]))
    out.add("clip.vision.embedding_length", gf.UINT32, int(c["hidden_size"]))
    out.add("clip.vision.feed_forward_length", gf.UINT32, int(c["intermediate_size"]))
    out.add("clip.vision.block_count", gf.UINT32, int(c["num_hidden_layers"]))
    out.add("clip.vision.attention.head_count", gf.UINT32, int(c["num_attention_heads"]))
    out.add("clip.vision.attention.layer_norm_epsilon", gf.FLOAT32, float(c["layer_norm_eps"]))
    out.add("clip.vision.image_mean", gf.ARRAY, list(tower.image_mean), gf.FLOAT32)
    out.add("clip.vision.image_std", gf.ARRAY, list(tower.image_std), gf.FLOAT32)
    # llama.cpp's clip.use_gelu selects ggml_gelu (the tanh approximation). The runtime reads the
    # transformers name as well, so a tower with exact GELU ("gelu") runs with erf.
    out.add("clip.use_gelu", gf.BOOL, True)
    out.add("gemma3_edge.vision.hidden_act", gf.STRING, str(c["hidden_act"]))
    if tower.pool_kernel != 4:  # llama.cpp's default, so its converter writes the key only for other values
        out.add("clip.vision.projector.scale_factor", gf.UINT32, tower.pool_kernel)


def check_vision_output(tower: VisionTower, output: str | Path, input_files) -> None:
    """Raise ValueError before anything is written when the mmproj output would replace an
    input file or a vision tensor has a dtype the converter cannot read."""
    path = mmproj_path(output).resolve()
    if any(path == Path(file).resolve() for file in input_files):
        raise ValueError(f"the vision projector output {mmproj_path(output)} is one of the input files; "
                         "choose another output path")
    for name, (st, hf_name) in sorted(tower.tensors.items()):
        dtype = st.entries[hf_name]["dtype"]
        if dtype not in ("F32", "F16", "BF16"):
            raise ValueError(f"{st.path}: vision tensor {hf_name} ({name}) has dtype {dtype}; expected F32, F16 or BF16")


def write_vision_tower(tower: VisionTower, output: str | Path, name: str, scheme: str, *, grid: bool = True,
                       search: bool = True, progress=None) -> str:
    """Write tower to mmproj_path(output) with its matrices in scheme.

    Returns a one-line note for the conversion report: path, size, formats and the largest
    relative weight error.
    """
    started = time.time()
    path = mmproj_path(output)
    shapes = tower.expected_shapes()
    formats = {n: _tensor_format(tower, n, shape, scheme) for n, shape in shapes.items()}
    out = gf.GGUFOutput(path)
    _metadata(out, tower, name)
    for n in sorted(shapes):
        shape = shapes[n]
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        out.add_tensor(n, shape, formats[n].type_id, row_bytes(formats[n], shape[-1]) * rows)

    max_error = 0.0

    def produce(entry: gf.TensorEntry) -> np.ndarray:
        nonlocal max_error
        st, hf_name = tower.tensors[entry.name]
        values = np.ascontiguousarray(st.load(hf_name), dtype=np.float32)
        if entry.name == "mm.soft_emb_norm.weight":
            values = values + np.float32(1.0)  # Gemma's RMSNorm multiplies by (1 + w)
        fmt = formats[entry.name]
        matrix = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values
        encoded = encode_tensor(matrix, fmt, grid=grid, search=search)
        max_error = max(max_error, encoded.rel_error)
        return encoded.raw

    wrap = (lambda items: progress(items, desc="vision tower", unit="tensor")) if progress else None
    size = out.write(produce, wrap)
    counts: dict[str, int] = {}
    for fmt in formats.values():
        counts[fmt.name] = counts.get(fmt.name, 0) + 1
    summary = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    log.info("wrote the vision tower to %s in %.0f s", path, time.time() - started)
    return (f"wrote the vision tower ({len(shapes)} tensors, scheme {scheme}: {summary}; max relative weight error "
            f"{max_error:.2e}) to {path} ({size / 1e6:.1f} MB); load it with --mmproj {path}")
