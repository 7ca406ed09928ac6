"""Conversion of tiny Hugging Face checkpoints (made by scripts/make_tiny_hf_checkpoint.py) into
the runtime's GGUF, checked against transformers' logits stored in tests/golden/quantize_tiny."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gemma3_edge
from gemma3_edge.quantize import ConvertOptions, UnsupportedModelError, convert
from gemma3_edge.quantize.calibrate import Forward, ModelShape
from gemma3_edge.quantize.gguf_read import load_tensor, read_tensor_table
from gemma3_edge.quantize.source import open_source

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "quantize_tiny"

_spec = importlib.util.spec_from_file_location("make_tiny_hf_checkpoint", REPO / "scripts" / "make_tiny_hf_checkpoint.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

# Bound on max over positions of ||ours - transformers|| / ||transformers - mean|| for the logits:
# about twice the largest error measured on the three checkpoints (conversion with 4
# calibration chunks, transformers 5.25; the test uses 2 chunks to save time). Measured maxima: f32 and lossless 7e-7 (float32
# summation order), f16 3.3e-4, bf16 3.8e-3, Q8_0 0.026 (the runtime also rounds activations to
# int8), int8-channel 0.019, SFP8 0.047, Q4_0 0.22, Q4_1 0.20, Q4_K 0.105, int4-channel 0.22.
LOGIT_BOUNDS = {"f32": 1e-5, "lossless": 1e-5, "f16": 2e-3, "bf16": 1.5e-2,
                "q8_0": 0.06, "int8-channel": 0.05, "sfp8": 0.1,
                "q4_0": 0.45, "q4_1": 0.45, "q4_k": 0.3, "int4-channel": 0.45}
EIGHT_BIT = ("f32", "f16", "bf16", "lossless", "q8_0", "int8-channel", "sfp8")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_hf")
    meta = json.loads((GOLDEN / "metadata.json").read_text())
    paths = {}
    for name in tiny.CONFIGS:
        assert tiny.weights_digest(name) == meta[name]["weights_sha256"], (
            f"{name}: weights differ from the goldens; rerun scripts/make_tiny_hf_checkpoint.py --golden")
        paths[name] = tiny.write_checkpoint(root / name, name)
    return paths


def golden(name: str) -> tuple[list[int], np.ndarray]:
    with np.load(GOLDEN / f"{name}.npz") as data:
        return data["ids"].tolist(), data["logits"].astype(np.float64)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    centred = reference - reference.mean(axis=1, keepdims=True)
    return np.linalg.norm(ours - reference, axis=1) / np.linalg.norm(centred, axis=1)


def load_model(path: Path, precision: str = "quantized"):
    return gemma3_edge.Model(path, n_ctx=256, n_threads=2, precision=precision)


@pytest.mark.parametrize("preset", list(LOGIT_BOUNDS))
@pytest.mark.parametrize("name", list(tiny.CONFIGS))
def test_logits_match_transformers(checkpoints, tmp_path, name, preset):
    out = tmp_path / f"{name}-{preset}.gguf"
    report = convert(checkpoints[name], out, ConvertOptions(preset=preset, progress=False, calibration_chunks=2))
    ids, reference = golden(name)
    model = load_model(out)
    assert model.tokenize(tiny.GOLDEN_TEXT) == ids
    ours = model.logits(ids).astype(np.float64)
    assert ours.shape == reference.shape
    error = relative_error(ours, reference)
    assert error.max() <= LOGIT_BOUNDS[preset], f"{preset}: max relative logit error {error.max():.3g}"
    if preset in EIGHT_BIT:
        assert (ours.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.9
    assert report.file_bytes == out.stat().st_size


@pytest.mark.parametrize("preset", ["q8_0", "q4_k", "int4-channel", "sfp8"])
def test_runtime_uses_written_weights(checkpoints, tmp_path, preset):
    # The runtime's float32 path on the written file must equal a numpy forward pass over the
    # file's dequantized tensors: float32 arithmetic differences only (1e-4 relative).
    out = tmp_path / f"wide-{preset}.gguf"
    convert(checkpoints["wide"], out, ConvertOptions(preset=preset, progress=False, calibration=False))
    ids, _ = golden("wide")
    entries, _ = read_tensor_table(out)
    weights = {e["name"]: load_tensor(out, e["name"]) for e in entries}
    forward = Forward(ModelShape.from_source(open_source(checkpoints["wide"])), weights)
    h = forward.embed(np.array(ids))
    for i in range(forward.shape.n_layers):
        h = forward.layer(i, h)
    expected = forward.logits(forward.final_hidden(h)).astype(np.float64)
    ours = load_model(out, precision="f32").logits(ids).astype(np.float64)
    assert relative_error(ours, expected).max() <= 1e-4


def test_report_counts_bits_per_weight(checkpoints, tmp_path):
    out = tmp_path / "wide-q4_0.gguf"
    report = convert(checkpoints["wide"], out, ConvertOptions(preset="q4_0", progress=False, calibration=False))
    linear = [t for t in report.tensors if t.role in ("attention", "feed_forward")]
    assert {t.format for t in linear} == {"Q4_0"}
    assert all(t.bits_per_weight == pytest.approx(4.5) for t in linear)
    assert report.bits_per_weight(("attention", "feed_forward")) == pytest.approx(4.5)
    embedding = [t for t in report.tensors if t.role == "embedding"]
    assert embedding[0].format == "Q8_0"  # the tied embedding stays at 8 bits


def test_narrow_rows_fall_back(checkpoints, tmp_path):
    # "text" has rows of 96 and 160 elements: no K-quant block (256) fits, so Q4_K falls back
    # to Q5_0 as llama.cpp does, and the report gives the reason.
    report = convert(checkpoints["text"], tmp_path / "text-q4_k.gguf",
                     ConvertOptions(preset="q4_k", progress=False, calibration=False))
    linear = [t for t in report.tensors if t.role in ("attention", "feed_forward")]
    assert {t.format for t in linear} == {"Q5_0"}
    assert all("Q4_K needs rows of 256" in t.note for t in linear)


def test_multimodal_converts_text_tower(checkpoints, tmp_path):
    report = convert(checkpoints["multimodal"], tmp_path / "mm.gguf", ConvertOptions(preset="f16", progress=False))
    names = [t.name for t in report.tensors]
    assert not any("vision" in n or "multi_modal" in n for n in names)
    assert any("vision tower" in note for note in report.notes)
    assert any("dropped" in note for note in report.notes)  # embedding rows beyond the tokenizer


def test_calibration_lowers_output_error(checkpoints, tmp_path):
    plain = convert(checkpoints["wide"], tmp_path / "a.gguf", ConvertOptions(preset="q4_0", progress=False, calibration=False))
    tuned = convert(checkpoints["wide"], tmp_path / "b.gguf", ConvertOptions(preset="q4_0", progress=False, calibration_chunks=4))
    methods = {t.method for t in tuned.tensors if t.role in ("attention", "feed_forward")}
    assert methods == {"gptq"}
    ids, reference = golden("wide")
    errors = [relative_error(load_model(tmp_path / f).logits(ids).astype(np.float64), reference).mean()
              for f in ("a.gguf", "b.gguf")]
    assert errors[1] < errors[0]


def test_grid_detection_is_lossless(checkpoints, tmp_path):
    # Q4_0 file -> f32 file (dequantized) -> Q4_0 again with grid detection: same tensor bytes.
    first = tmp_path / "q4.gguf"
    convert(checkpoints["wide"], first, ConvertOptions(preset="q4_0", progress=False, calibration=False))
    dequantized = tmp_path / "f32.gguf"
    convert(first, dequantized, ConvertOptions(preset="f32", progress=False))
    again = tmp_path / "q4-again.gguf"
    report = convert(dequantized, again, ConvertOptions(preset="q4_0", progress=False))
    assert {t.method for t in report.tensors if t.role in ("attention", "feed_forward")} == {"grid"}
    for e in read_tensor_table(first)[0]:
        assert np.array_equal(load_tensor(first, e["name"]), load_tensor(again, e["name"])), e["name"]
    lossless = convert(dequantized, tmp_path / "lossless.gguf", ConvertOptions(preset="lossless", progress=False))
    assert {t.format for t in lossless.tensors if t.role == "feed_forward"} == {"Q4_0"}


def test_output_must_not_be_input(checkpoints, tmp_path):
    first = tmp_path / "a.gguf"
    convert(checkpoints["text"], first, ConvertOptions(preset="f16", progress=False))
    before = first.read_bytes()
    with pytest.raises(ValueError, match="is one of the input files"):
        convert(first, first, ConvertOptions(preset="q8_0", progress=False))
    assert first.read_bytes() == before


@pytest.mark.parametrize("victim", ["tokenizer.model", "config.json", "model.safetensors"])
def test_output_never_replaces_checkpoint_file(checkpoints, victim):
    target = checkpoints["text"] / victim
    before = target.read_bytes()
    with pytest.raises(ValueError, match="is one of the input files"):
        convert(checkpoints["text"], target, ConvertOptions(preset="f16", progress=False))
    assert target.read_bytes() == before


def test_unsupported_architecture_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM is not supported"):
        convert(tmp_path, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_output_mode_follows_umask(checkpoints, tmp_path):
    # mkstemp creates the temporary file with mode 0600, but the output must get a new file's mode.
    out = tmp_path / "out.gguf"
    previous = os.umask(0o022)
    try:
        convert(checkpoints["text"], out, ConvertOptions(preset="f16", progress=False))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_failed_conversion_leaves_no_file(checkpoints, tmp_path, monkeypatch):
    conv = importlib.import_module("gemma3_edge.quantize.convert")  # the module, not the function

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(conv, "encode_tensor", broken)
    with pytest.raises(RuntimeError, match="injected"):
        convert(checkpoints["text"], tmp_path / "out.gguf", ConvertOptions(preset="q4_0", progress=False, calibration=False))
    assert list(tmp_path.iterdir()) == []


def test_cli_convert_and_quality(checkpoints, tmp_path):
    out = tmp_path / "tiny-q8.gguf"
    run = subprocess.run([sys.executable, "-m", "gemma3_edge.cli", "convert", str(checkpoints["wide"]), str(out),
                          "--preset", "q8_0", "--quiet", "--calibration-chunks", "2"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "bits per weight" in run.stdout
    reference = tmp_path / "tiny-f32.gguf"
    convert(checkpoints["wide"], reference, ConvertOptions(preset="f32", progress=False))
    text = tmp_path / "text.txt"
    text.write_text((REPO / "quantize" / "data" / "calibration.txt").read_text()[:20000])
    run = subprocess.run([sys.executable, "-m", "gemma3_edge.cli", "quality", str(reference), str(out), "-f", str(text),
                          "-c", "64", "--chunks", "4", "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["n_scored"] == 4 * 31
    assert 0 < result["mean_kld"] < 0.05
    assert result["same_top1"] > 0.8


def test_cli_rejects_unsupported_input(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))
    run = subprocess.run([sys.executable, "-m", "gemma3_edge.cli", "convert", str(tmp_path), str(tmp_path / "o.gguf")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "MistralForCausalLM is not supported" in run.stderr


def test_mixed_precision_meets_budget(checkpoints, tmp_path):
    report = convert(checkpoints["wide"], tmp_path / "mixed.gguf",
                     ConvertOptions(preset="mixed", target_bpw=5.5, calibration_chunks=4, progress=False))
    assert report.bits_per_weight(("attention", "feed_forward")) <= 5.5
    linear = {t.format for t in report.tensors if t.role in ("attention", "feed_forward")}
    assert linear <= {"Q4_K", "Q5_K", "Q6_K", "Q8_0"}
    assert any("mixed precision" in note for note in report.notes)


def test_mixed_precision_rejects_impossible_budget(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="raise the target"):
        convert(checkpoints["wide"], tmp_path / "mixed.gguf",
                ConvertOptions(preset="mixed", target_bpw=3.0, calibration_chunks=2, progress=False))
    with pytest.raises(ValueError, match="--target-size BYTES or --target-bpw"):
        convert(checkpoints["wide"], tmp_path / "mixed.gguf", ConvertOptions(preset="mixed", progress=False))
