"""`gemma3-edge convert` on a Gemma3ForConditionalGeneration checkpoint: the text model plus the
vision projector file (OUT-mmproj.gguf), run with images and compared with transformers.

The checkpoint is the tiny random model of scripts/make_tiny_vision_model.py, saved with
transformers' save_pretrained, so torch is needed. The text model is converted with the f32
preset so that only the vision tower's scheme changes the outputs.

Tolerances: for every scheme the reference is transformers in float64 running the weights the
converted file stores (dequantized), so the comparison checks the conversion (names, layouts,
the 1 + w norm) and not the rounding the scheme chose. Float formats run in float32 and must
stay within GAP_FACTOR times transformers' own float32 error (as tests/test_vision.py). Q8_0
matrices run on the int8 kernels, which also round activations to int8 per block of 32. Each
product then carries a relative error near 1/254, and 3% bounds its accumulation through two
layers and the projector (the bound of test_quantized_tower_close_to_f32).

Measured: 4.4e-7 (soft tokens) and 3.3e-7 (logits) for the float paths, 3.5e-3 and 1.1e-3 on
the int8 path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import gemma3_edge
from gemma3_edge import cli, vision
from gemma3_edge.quantize import UnsupportedModelError
from gemma3_edge.quantize.vision import hf_vision_name, mmproj_path
from test_vision import CASES, GAP_FACTOR, GOLDEN_DIR, META, tiny

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

INT8_BOUND = 0.03
# Float32 arithmetic against the float64 reference, as in tests/test_vision.py.
FLOAT_BOUND = {key: GAP_FACTOR * gap for key, gap in META["float32_gap"].items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny.write_hf_checkpoint(tmp_path_factory.mktemp("tiny-vision-hf") / "hf")


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDEN_DIR / "goldens.npz") as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def images():
    return tiny.sample_images()


def _convert(checkpoint, out, *options) -> str:
    code = cli.main(["convert", str(checkpoint), str(out), "-q", *options])
    assert code == 0
    return str(mmproj_path(out))


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    """Scheme -> (text GGUF, mmproj GGUF), converted with the CLI."""
    out_dir = tmp_path_factory.mktemp("converted")
    files = {}
    for scheme in ("f32", "f16", "q8_0"):
        out = out_dir / f"tiny-{scheme}.gguf"
        files[scheme] = (out, _convert(checkpoint, out, "--preset", "f32", "--vision", scheme))
    return files


def _file_weights(mmproj: str) -> dict[str, np.ndarray]:
    """The checkpoint's weights with the vision tower replaced by what mmproj stores."""
    reader = gguf.GGUFReader(mmproj)
    stored = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    weights = tiny.make_weights()
    for name, original in weights.items():
        ours = hf_vision_name(name)
        if ours is None:
            continue
        values = np.asarray(stored[ours], np.float32).reshape(original.shape)
        weights[name] = values - np.float32(1.0) if ours == "mm.soft_emb_norm.weight" else values
    return weights


def _reference(weights, case, pixels, goldens):
    """transformers in float64: soft tokens of every image and the logits at the golden rows."""
    tiny._patch_float64()
    model = tiny.hf_model(weights).to(torch.float64)
    name = case["name"]
    ids = torch.from_numpy(goldens[f"{name}/ids"].astype(np.int64))[None]
    pixel_values = torch.from_numpy(np.stack(pixels)).to(torch.float64)
    token_types = torch.from_numpy(goldens[f"{name}/token_type_ids"].astype(np.int64))[None]
    with torch.no_grad():
        tower = model.model.vision_tower(pixel_values=pixel_values).last_hidden_state
        soft = model.model.multi_modal_projector(tower).numpy()
        logits = model(input_ids=ids, pixel_values=pixel_values, token_type_ids=token_types,
                       attention_mask=torch.ones_like(ids), use_cache=False).logits[0].numpy()
    return soft, logits[goldens[f"{name}/logit_positions"]]


def _runtime(model, case, images):
    """Our soft tokens of every image and the logits at every position of the case's prompt."""
    chosen = [images[n] for n in case["images"]]
    options = vision.parse_pan_and_scan(case["pan_and_scan"])
    pixels = [p for image in chosen for p in model._vision.preprocess(image, options)]
    soft = np.stack([model._vision.encode_tower(p)[0] for p in pixels])
    prompt = model.image_prompt(case["text"], chosen, pan_and_scan=case["pan_and_scan"])
    with model._lock:
        model._cached_tokens = []
        model._context.reset()
        logits = model._context.eval(prompt.ids, 0, **prompt.eval_inputs(0, model.config["d_model"]))
    return pixels, soft, logits, prompt.ids


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - reference).max() / np.abs(reference).max())


def test_f32_conversion_matches_goldens(converted, images, goldens):
    # f32 keeps the checkpoint's weights exactly, so the goldens of the original model apply.
    text, mmproj = converted["f32"]
    model = gemma3_edge.Model(text, mmproj=mmproj, n_ctx=2048, n_threads=2, precision="f32")
    for name in ("one_image", "pan_and_scan"):
        _, soft, logits, ids = _runtime(model, CASES[name], images)
        assert ids == goldens[f"{name}/ids"].tolist()
        soft_rows = soft[:, ::META["soft_token_stride"]]
        assert _relative_error(soft_rows, goldens[f"{name}/soft_tokens"]) <= FLOAT_BOUND["soft_tokens"]
        positions = goldens[f"{name}/logit_positions"]
        assert _relative_error(logits[positions], goldens[f"{name}/logits"]) <= FLOAT_BOUND["logits"]


@pytest.mark.parametrize("scheme, precision, soft_bound, logit_bound", [
    ("f16", "quantized", FLOAT_BOUND["soft_tokens"], FLOAT_BOUND["logits"]),
    ("q8_0", "f32", FLOAT_BOUND["soft_tokens"], FLOAT_BOUND["logits"]),
    ("q8_0", "quantized", INT8_BOUND, INT8_BOUND),
])
def test_scheme_matches_transformers(converted, images, goldens, scheme, precision, soft_bound, logit_bound):
    text, mmproj = converted[scheme]
    model = gemma3_edge.Model(text, mmproj=mmproj, n_ctx=2048, n_threads=2, precision=precision)
    case = CASES["two_images"]
    pixels, soft, logits, ids = _runtime(model, case, images)
    assert ids == goldens["two_images/ids"].tolist()
    soft_reference, logit_reference = _reference(_file_weights(mmproj), case, pixels, goldens)
    assert _relative_error(soft, soft_reference) <= soft_bound
    positions = goldens["two_images/logit_positions"]
    assert _relative_error(logits[positions], logit_reference) <= logit_bound


def test_scheme_sets_vision_formats(converted):
    expected = {"f32": {"F32"}, "f16": {"F16"}, "q8_0": {"Q8_0", "F16"}}
    for scheme, (_, mmproj) in converted.items():
        reader = gguf.GGUFReader(mmproj)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        matrices = {types[f"v.blk.{i}.{part}.weight"] for i in range(2)
                    for part in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down")}
        assert matrices == expected[scheme], scheme
        # Embeddings stay F32 in every scheme, as llama.cpp's converter writes them.
        assert types["v.patch_embd.weight"] == types["v.position_embd.weight"] == "F32"
    # The MLP down-projection has 80 inputs, not a whole number of 32-element blocks.
    reader = gguf.GGUFReader(converted["q8_0"][1])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["v.blk.0.ffn_down.weight"] == "F16"
    assert types["v.blk.0.ffn_up.weight"] == "Q8_0"


def test_default_vision_scheme_is_int8(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny-default.gguf"
    mmproj = _convert(checkpoint, out, "--no-calibration")
    assert f"load it with --mmproj {mmproj}" in capsys.readouterr().out
    reader = gguf.GGUFReader(mmproj)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["v.blk.0.attn_q.weight"] == "Q8_0"
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.architecture"] == "clip"
    assert fields["clip.projector_type"] == "gemma3"
    assert fields["clip.vision.projection_dim"] == tiny.TEXT_CONFIG["hidden_size"]
    assert fields["clip.vision.image_size"] == tiny.VISION_CONFIG["image_size"]
    model = gemma3_edge.Model(out, mmproj=mmproj, n_ctx=2048, n_threads=2)
    assert model.has_vision


def test_text_checkpoint_writes_no_mmproj(tmp_path):
    from test_quantize_convert import tiny as tiny_text

    checkpoint = tiny_text.write_checkpoint(tmp_path / "text", "text")
    out = tmp_path / "text.gguf"
    _convert(checkpoint, out, "--preset", "f16")
    assert out.is_file()
    assert not mmproj_path(out).exists()


def test_inconsistent_vision_config_rejected(checkpoint, tmp_path):
    # One more layer than the checkpoint has: the converter must stop before writing anything.
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in checkpoint.iterdir():
        (broken / path.name).symlink_to(path)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    config["vision_config"]["num_hidden_layers"] = 3
    (broken / "config.json").unlink()
    (broken / "config.json").write_text(json.dumps(config), encoding="utf-8")
    from gemma3_edge.quantize import ConvertOptions, convert

    out = tmp_path / "out.gguf"
    with pytest.raises(UnsupportedModelError, match="v.blk.2.ln1.weight"):
        convert(broken, out, ConvertOptions(preset="f32", progress=False))
    assert not out.exists()
    assert not mmproj_path(out).exists()


def test_second_conversion_into_the_checkpoint_directory(checkpoint, tmp_path):
    # The first run's mmproj lies next to the inputs but is not one of them, so a second run
    # into the same directory must succeed.
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for path in checkpoint.iterdir():
        (folder / path.name).symlink_to(path)
    _convert(folder, folder / "model.gguf", "--preset", "f32")
    _convert(folder, folder / "model.gguf", "--preset", "f32")


def test_unreadable_vision_dtype_rejected_before_writing(checkpoint, tmp_path):
    # A vision tensor stored as I32: the run must fail before the text model file is written.
    from gemma3_edge.quantize import ConvertOptions, convert

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in checkpoint.iterdir():
        if path.suffix != ".safetensors":
            (broken / path.name).symlink_to(path)
    for shard in checkpoint.glob("*.safetensors"):
        data = bytearray(shard.read_bytes())
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + length])
        name = next(n for n in sorted(header) if "vision_tower" in n and header[n]["dtype"] == "F32")
        header[name]["dtype"] = "I32"
        text = json.dumps(header, separators=(",", ":")).encode("utf-8").ljust(length)
        assert len(text) == length
        (broken / shard.name).write_bytes(data[:8] + text + data[8 + length:])
    out = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="has dtype I32; expected F32, F16 or BF16"):
        convert(broken, out, ConvertOptions(preset="f32", progress=False))
    assert not out.exists()
    assert not mmproj_path(out).exists()
