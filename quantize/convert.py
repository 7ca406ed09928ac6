"""The conversion pipeline: source checkpoint -> the runtime's GGUF, with a per-tensor report."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import gguf_file as gf
from .calibrate import DEFAULT_CALIBRATION_FILE, Calibration, collect
from .encode import Encoded, encode_tensor
from .formats import FORMATS, Format, row_bytes
from .grid import DETECTION_ORDER, detect_grid
from .schemes import ROLES, fitting_format, role_schemes, scheme_format
from .source import Source, SourceTensor, open_source
from .vision import check_vision_output, open_vision_tower, vision_scheme, write_vision_tower

log = logging.getLogger("gemma3_edge.quantize")

# llama.cpp's general.file_type (enum llama_ftype) for files whose linear layers share a type.
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K": 15,
               "Q5_K": 17, "Q6_K": 18, "BF16": 32}
_FILE_TYPE_GUESSED = 1024


@dataclass
class ConvertOptions:
    """Conversion settings. Every quantization-aware step can be switched off to measure it."""

    preset: str = "q4_0"
    embedding: str | None = None      # scheme overrides per role
    attention: str | None = None
    feed_forward: str | None = None
    grid: bool = True                 # 1. re-encode weights that lie on the format's grid exactly
    search: bool = True               # 2. error-minimising scales instead of the absolute maximum
    calibration: bool = True          # 3. activation statistics: importance-weighted scales, GPTQ
    calibration_file: Path | None = None
    calibration_chunks: int = 16
    calibration_ctx: int = 512
    target_size: int | None = None    # 4. mixed precision: file size in bytes
    target_bpw: float | None = None   #    or bits per weight over the attention and feed-forward tensors
    sensitivity_tokens: int = 256     #    tokens per sensitivity measurement
    mixed_project_formats: bool = False  # also choose per-channel int4 (a project type)
    vision: str | None = None         # vision tower scheme (default: q8_0, or the f32/f16/bf16 preset's)
    progress: bool = True


@dataclass
class TensorReport:
    name: str
    role: str
    shape: list
    format: str
    n_bytes: int
    bits_per_weight: float
    method: str
    rel_error: float = 0.0
    output_error: float = 0.0
    note: str = ""


@dataclass
class ConvertReport:
    input: str
    output: str
    file_bytes: int
    seconds: float
    tensors: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def bits_per_weight(self, roles: tuple[str, ...] | None = None) -> float:
        chosen = [t for t in self.tensors if roles is None or t.role in roles]
        n = sum(int(np.prod(t.shape)) for t in chosen)
        return 8.0 * sum(t.n_bytes for t in chosen) / n if n else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bits_per_weight"] = {"overall": self.bits_per_weight(),
                                   "linear": self.bits_per_weight(("attention", "feed_forward")),
                                   "embedding": self.bits_per_weight(("embedding",))}
        return data

    def summary(self, per_tensor: bool = True) -> str:
        lines = []
        if per_tensor:
            lines.append(f"{'tensor':34} {'format':11} {'bpw':>6} {'method':7} {'rel.err':>9} {'out.err':>9}")
            for t in self.tensors:
                lines.append(f"{t.name:34} {t.format:11} {t.bits_per_weight:6.3f} {t.method:7} "
                             f"{t.rel_error:9.2e} {t.output_error:9.2e}" + (f"  {t.note}" if t.note else ""))
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.format] = counts.get(t.format, 0) + 1
        lines.append("formats: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
        lines.append(f"bits per weight: {self.bits_per_weight():.3f} overall, "
                     f"{self.bits_per_weight(('attention', 'feed_forward')):.3f} attention + feed-forward, "
                     f"{self.bits_per_weight(('embedding',)):.3f} embedding")
        lines.append(f"wrote {self.output} ({self.file_bytes / 1e6:.1f} MB) in {self.seconds:.0f} s")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _progress(enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def wrap(iterable, **kwargs):
        return tqdm(iterable, leave=False, **kwargs)

    return wrap


def _check_paths(source: Source, output: Path) -> None:
    out = output.resolve()
    for path in source.input_files:
        if path.resolve() == out:
            raise ValueError(f"output {output} is one of the input files; choose another output path")
    if source.kind == "hf" and out.parent == source.path.resolve():
        log.info("writing into the checkpoint directory %s", source.path)


@dataclass
class _Plan:
    tensor: SourceTensor
    fmt: Format
    mode: str            # "copy" (the input's bytes), "lossless" (find a grid) or "encode"
    note: str = ""


def _plan(source: Source, schemes: dict[str, str]) -> list[_Plan]:
    plans = []
    for t in source.tensors:
        role = t.role
        if role not in ROLES:
            plans.append(_Plan(t, FORMATS["F32"], "encode"))
            continue
        scheme = schemes[role]
        cols = t.shape[-1]
        if scheme == "lossless":
            if t.raw is not None and t.source_type in FORMATS and FORMATS[t.source_type].kind != "float":
                plans.append(_Plan(t, FORMATS[t.source_type], "copy"))
            else:
                plans.append(_Plan(t, FORMATS["F32"], "lossless"))
            continue
        if scheme == "mixed":
            plans.append(_Plan(t, FORMATS["Q4_0"], "mixed"))
            continue
        fmt = scheme_format(scheme)
        fitted = fitting_format(fmt, cols)
        note = "" if fitted is fmt else f"{fmt.name} needs rows of {fmt.block_size}, row is {cols}"
        plans.append(_Plan(t, fitted, "encode", note))
    return plans


def _metadata(out: gf.GGUFOutput, source: Source, file_type: int) -> None:
    out.add("general.architecture", gf.STRING, "gemma3")
    out.add("general.type", gf.STRING, "model")
    out.add("general.name", gf.STRING, str(source.name))
    general = getattr(source, "metadata_general", {})
    for key in ("general.basename", "general.size_label", "general.license"):
        if isinstance(general.get(key), str):
            out.add(key, gf.STRING, general[key])
    out.add("general.file_type", gf.UINT32, file_type)
    out.add("general.quantization_version", gf.UINT32, 2)

    for key, value in source.hparams.items():
        full = "gemma3." + key
        if isinstance(value, bool):
            out.add(full, gf.BOOL, value)
        elif isinstance(value, int):
            out.add(full, gf.UINT32, value)
        elif isinstance(value, float):
            out.add(full, gf.FLOAT32, value)
        elif isinstance(value, str):
            out.add(full, gf.STRING, value)

    v = source.vocab
    out.add("tokenizer.ggml.model", gf.STRING, "llama")
    out.add("tokenizer.ggml.pre", gf.STRING, v.extra.get("tokenizer.ggml.pre", "default"))
    out.add("tokenizer.ggml.tokens", gf.ARRAY, v.tokens, gf.STRING)
    out.add("tokenizer.ggml.scores", gf.ARRAY, v.scores, gf.FLOAT32)
    out.add("tokenizer.ggml.token_type", gf.ARRAY, v.types, gf.INT32)
    out.add("tokenizer.ggml.bos_token_id", gf.UINT32, v.bos_id)
    out.add("tokenizer.ggml.eos_token_id", gf.UINT32, v.eos_id)
    out.add("tokenizer.ggml.unknown_token_id", gf.UINT32, v.unk_id)
    out.add("tokenizer.ggml.padding_token_id", gf.UINT32, v.pad_id)
    flags = {"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
             "tokenizer.ggml.add_space_prefix": False}
    for key, value in v.extra.items():
        if isinstance(value, bool):
            flags[key] = value
    for key, value in flags.items():
        out.add(key, gf.BOOL, value)
    # Further keys of a GGUF input, such as tokenizer.ggml.eot_token_id.
    for key, value in v.extra.items():
        if key == "tokenizer.ggml.pre" or isinstance(value, bool):
            continue
        if isinstance(value, int):
            out.add(key, gf.UINT32, value)
        elif isinstance(value, str):
            out.add(key, gf.STRING, value)
    if v.chat_template:
        out.add("tokenizer.chat_template", gf.STRING, v.chat_template)


def _load_float_weights(source: Source, progress) -> dict[str, np.ndarray]:
    iterator = progress(source.tensors, desc="loading", unit="tensor") if progress else source.tensors
    return {t.name: t.load() for t in iterator}


def _calibration_text(options: ConvertOptions) -> str:
    path = Path(options.calibration_file) if options.calibration_file else DEFAULT_CALIBRATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"calibration text not found: {path}")
    return path.read_text(encoding="utf-8")


def convert(input_path: str | Path, output_path: str | Path, options: ConvertOptions | None = None) -> ConvertReport:
    """Convert a Hugging Face checkpoint directory or a GGUF file into the runtime's GGUF."""
    options = options or ConvertOptions()
    start = time.time()
    source = open_source(input_path)
    output = Path(output_path)
    _check_paths(source, output)
    vision_tower = open_vision_tower(source)  # None unless a multimodal HF checkpoint
    vision = vision_scheme(options.preset, options.vision)
    if vision_tower is not None:
        check_vision_output(vision_tower, output, source.input_files)  # before the text file is written
    progress = _progress(options.progress)
    schemes = role_schemes(options.preset, {"embedding": options.embedding, "attention": options.attention,
                                            "feed_forward": options.feed_forward})
    if schemes["embedding"] not in ("lossless",) and options.embedding is None:
        embedding_fmt = scheme_format(schemes["embedding"])
        if embedding_fmt.kind != "float" and embedding_fmt.bits_per_weight < 8:
            schemes["embedding"] = "q8_0"
    plans = _plan(source, schemes)
    mixed = any(p.mode == "mixed" for p in plans)
    if mixed and options.target_size is None and options.target_bpw is None:
        raise ValueError("the mixed preset needs --target-size BYTES or --target-bpw BITS")

    # Calibration serves only tensors that are rounded onto a grid.
    needs_float = any(p.mode == "mixed" or (p.mode == "encode" and p.fmt.kind != "float")
                      for p in plans if p.tensor.role in ("attention", "feed_forward"))
    calibration: Calibration | None = None
    weights: dict[str, np.ndarray] = {}
    if options.calibration and needs_float:
        weights = _load_float_weights(source, progress)
        calibration = collect(source, weights, _calibration_text(options), n_ctx=options.calibration_ctx,
                              n_chunks=options.calibration_chunks, keep_residuals=mixed, progress=progress)

    chosen: dict[str, Encoded] = {}
    notes = list(source.notes)
    if mixed:
        from .mixed import allocate

        if not weights:
            weights = _load_float_weights(source, progress)
        chosen, mixed_notes = allocate(source, plans, weights, calibration, options, progress)
        notes.extend(mixed_notes)
        for p in plans:
            if p.mode == "mixed":
                p.fmt, p.mode = chosen[p.tensor.name].fmt, "chosen"

    # Sizes must be known before any data is written: "lossless" tensors are resolved now.
    resolved: dict[str, Encoded] = {}
    for p in plans:
        if p.mode == "lossless":
            resolved[p.tensor.name] = _lossless(weights.get(p.tensor.name) if weights else p.tensor.load())
            p.fmt = resolved[p.tensor.name].fmt

    linear_formats = {p.fmt.name for p in plans if p.tensor.role in ("attention", "feed_forward")}
    file_type = _FILE_TYPES.get(linear_formats.pop(), _FILE_TYPE_GUESSED) if len(linear_formats) == 1 else _FILE_TYPE_GUESSED

    out = gf.GGUFOutput(output)
    _metadata(out, source, file_type)
    by_name = {}
    for p in plans:
        shape = p.tensor.shape
        n_bytes = row_bytes(p.fmt, shape[-1]) * (int(np.prod(shape[:-1])) if len(shape) > 1 else 1)
        out.add_tensor(p.tensor.name, shape, p.fmt.type_id, n_bytes)
        by_name[p.tensor.name] = p
    reports: list[TensorReport] = []

    def produce(entry: gf.TensorEntry):
        p = by_name[entry.name]
        t = p.tensor
        if p.mode == "copy":
            enc = Encoded(p.fmt, t.raw(), "copy")
        elif p.mode == "chosen":
            enc = chosen.pop(t.name)
        elif p.mode == "lossless":
            enc = resolved.pop(t.name)
        else:
            enc = _encode_planned(p, weights, calibration, options)
        weights.pop(t.name, None)
        reports.append(TensorReport(t.name, t.role, list(t.shape), enc.fmt.name, entry.n_bytes,
                                    8.0 * entry.n_bytes / t.n_elements, enc.method, enc.rel_error,
                                    enc.output_error, p.note))
        return enc.raw

    wrap = (lambda items: progress(items, desc="writing", unit="tensor")) if progress else None
    size = out.write(produce, wrap)
    if vision_tower is not None:
        notes.append(write_vision_tower(vision_tower, output, str(source.name), vision, grid=options.grid,
                                        search=options.search, progress=progress))
    return ConvertReport(str(source.path), str(output), size, time.time() - start, reports, notes)


def _encode_planned(p: _Plan, weights, calibration: Calibration | None, options: ConvertOptions) -> Encoded:
    t = p.tensor
    if (p.fmt.kind != "float" and options.grid and t.raw is not None and t.source_type == p.fmt.name):
        return Encoded(p.fmt, t.raw(), "copy")
    w = weights[t.name] if t.name in weights else t.load()
    hessian = calibration.for_tensor(t.name) if calibration is not None else None
    importance = calibration.importance(t.name) if calibration is not None else None
    return encode_tensor(w, p.fmt, grid=options.grid, search=options.search, importance=importance,
                         hessian=hessian, n_tokens=calibration.n_tokens if calibration else 1)


def _lossless(w: np.ndarray) -> Encoded:
    """Encode w in the smallest format that stores it exactly: a detected grid, else BF16, F16 or F32."""
    w2 = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w.reshape(1, -1)
    for name in DETECTION_ORDER:
        fmt = FORMATS[name]
        if w2.shape[-1] % fmt.block_size == 0 and w.ndim > 1:
            found = detect_grid(fmt, w2)
            if found is not None:
                from .formats import pack

                return Encoded(fmt, pack(fmt, found[0], found[1]).reshape(-1), "grid")
    for name in ("BF16", "F16", "F32"):
        enc = encode_tensor(w2, FORMATS[name])
        if enc.method == "exact":
            return enc
    raise AssertionError("F32 is always exact")


def report_json(report: ConvertReport) -> str:
    return json.dumps(report.to_dict(), indent=1)
