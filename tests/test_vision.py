"""Gemma 3 vision against transformers: preprocessing, Pan & Scan, prompt layout, vision tower,
projector and final logits of a tiny random Gemma3ForConditionalGeneration.

The model and its goldens come from scripts/make_tiny_vision_model.py: the GGUF files are
rebuilt here from the same PCG64 bit stream (no torch needed), and tests/golden/vision contains
transformers' outputs in float64 (see its metadata.json for versions and the float32 gap).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import gemma3_edge
from gemma3_edge import chat, vision

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden" / "vision"

gguf = pytest.importorskip("gguf")
pytest.importorskip("PIL")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_tiny_vision_model",
                                                  REPO_ROOT / "scripts" / "make_tiny_vision_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tiny = _load_script()
META = json.loads((GOLDEN_DIR / "metadata.json").read_text(encoding="utf-8"))
CASES = {case["name"]: case for case in META["cases"]}
# Our float32 arithmetic may differ from the float64 reference by at most this many times what
# transformers' own float32 run differs from it (metadata.json float32_gap, measured per output).
GAP_FACTOR = 4.0


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDEN_DIR / "goldens.npz") as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return tiny.write_model(tmp_path_factory.mktemp("tiny-vision"))


@pytest.fixture(scope="module")
def model(model_files):
    text, mmproj = model_files
    return gemma3_edge.Model(text, mmproj=mmproj, n_ctx=2048, n_threads=2, precision="f32")


@pytest.fixture(scope="module")
def images():
    return tiny.sample_images()


def _case_images(case, images):
    return [images[name] for name in case["images"]]


def _prompt(model, case, images):
    return model.image_prompt(case["text"], _case_images(case, images), pan_and_scan=case["pan_and_scan"])


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - reference).max() / np.abs(reference).max())


def test_weights_match_goldens():
    # A changed weight generator would make every comparison below fail for an unrelated reason.
    assert tiny.weights_digest(tiny.make_weights()) == META["weights_sha256"]


@pytest.mark.parametrize("name", list(CASES))
def test_pixel_values_match_processor(model, images, goldens, name):
    case = CASES[name]
    options = vision.parse_pan_and_scan(case["pan_and_scan"])
    pixels = [p for image in _case_images(case, images) for p in model._vision.preprocess(image, options)]
    stacked = np.stack(pixels)
    levels = np.rint((stacked * np.float32(0.5) + np.float32(0.5)) * 255.0).astype(np.uint8)
    assert stacked.shape == (case["n_images"], 3, 128, 128)
    assert np.array_equal(levels, goldens[f"{name}/pixel_levels"])
    assert hashlib.sha256(stacked.tobytes()).hexdigest() == case["pixel_sha256"]


@pytest.mark.parametrize("name", list(CASES))
def test_pan_and_scan_crop_counts(images, goldens, name):
    case = CASES[name]
    options = vision.PanAndScan() if case["pan_and_scan"] else None
    counts = []
    for image in _case_images(case, images):
        rgb = vision.to_rgb_array(image)
        counts.append(len(vision.pan_and_scan_crops(rgb, options)) if options else 0)
    assert counts == goldens[f"{name}/num_crops"].tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_token_layout_matches_processor(model, images, goldens, name):
    prompt = _prompt(model, CASES[name], images)
    assert prompt.ids == goldens[f"{name}/ids"].tolist()
    image_tokens = np.zeros(len(prompt.ids), np.int8)
    for begin, end in prompt.spans:
        assert end - begin == 256
        image_tokens[begin:end] = 1
    assert np.array_equal(image_tokens, goldens[f"{name}/token_type_ids"])
    assert len(prompt.spans) == CASES[name]["n_images"]


@pytest.mark.parametrize("name", list(CASES))
def test_tower_and_soft_tokens_match(model, images, goldens, name):
    case = CASES[name]
    options = vision.parse_pan_and_scan(case["pan_and_scan"])
    pixels = [p for image in _case_images(case, images) for p in model._vision.preprocess(image, options)]
    soft, towers = zip(*(model._vision.encode_tower(p) for p in pixels))
    tower_rows = np.stack(towers)[:, ::META["tower_row_stride"]]
    soft_rows = np.stack(soft)[:, ::META["soft_token_stride"]]
    assert _relative_error(tower_rows, goldens[f"{name}/tower_rows"]) <= GAP_FACTOR * META["float32_gap"]["tower"]
    assert _relative_error(soft_rows, goldens[f"{name}/soft_tokens"]) <= \
        GAP_FACTOR * META["float32_gap"]["soft_tokens"]


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match(model, images, goldens, name):
    prompt = _prompt(model, CASES[name], images)
    with model._lock:
        model._cached_tokens = []
        model._context.reset()
        logits = model._context.eval(prompt.ids, 0, **prompt.eval_inputs(0, model.config["d_model"]))
    positions = goldens[f"{name}/logit_positions"]
    assert _relative_error(logits[positions], goldens[f"{name}/logits"]) <= GAP_FACTOR * META["float32_gap"]["logits"]


def test_generate_starts_with_reference_argmax(model, images, goldens):
    case = CASES["one_image"]
    reference = goldens["one_image/logits"][-1]
    top2 = np.sort(reference)[-2:]
    assert top2[1] - top2[0] > 1e-3  # a margin far above the logit error allowed above
    expected = int(np.argmax(reference))
    assert expected not in model.stop_token_ids
    model.generate(case["text"], images=_case_images(case, images), max_tokens=1, temperature=0)
    assert model.last_stats.token_ids == [expected]


def test_quantized_tower_close_to_f32(tmp_path, images):
    # Q8_0 weights with int8 activations against the same weights dequantized to float32.
    # Each int8 product carries a relative error near 1/254 (half a quantization step of
    # weights and activations); 3% bounds the accumulated error of two layers and the projector
    # (measured: 0.2% to 0.4% on the sample images).
    _, mmproj = tiny.write_model(tmp_path, vision_weight_type=gguf.GGMLQuantizationType.Q8_0, suffix="-q8")
    quantized = vision.VisionEncoder(mmproj, "quantized", 2)
    reference = vision.VisionEncoder(mmproj, "f32", 2)
    assert any("i8" in line for line in quantized.layout_summary())
    pixels = quantized.preprocess(images["square"])[0]
    ours, _ = quantized.encode(pixels)
    expected, _ = reference.encode(pixels)
    assert _relative_error(ours, expected) < 0.03


def test_image_cache_and_prefix_reuse(model, images):
    model._vision.clear_cache()
    first = [{"role": "user", "content": [{"type": "image", "image": images["square"]},
                                          {"type": "text", "text": "what is it?"}]}]
    model.create_chat_completion(first, max_tokens=2, temperature=0)
    assert (model.last_stats.images_encoded, model.last_stats.images_cached) == (1, 0)
    reply = chat.chat(model, first, max_tokens=2, temperature=0)
    assert (model.last_stats.images_encoded, model.last_stats.images_cached) == (0, 1)
    follow_up = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "and then?"}]
    model.create_chat_completion(follow_up, max_tokens=1, temperature=0)
    assert model.last_stats.cached_prompt_tokens > 256  # the image's tokens were not recomputed
    other = [{"role": "user", "content": [{"type": "image", "image": images["gray"]},
                                          {"type": "text", "text": "what is it?"}]}]
    model.create_chat_completion(other, max_tokens=1, temperature=0)
    prompt = chat.chat_prompt(model, other)
    assert model.last_stats.cached_prompt_tokens <= prompt.spans[0][0]  # reuse stops before another image


def test_chat_image_layout_matches_text_prompt(model, images):
    buffer = io.BytesIO()
    images["rgba"].save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"},
                                             {"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "b"}]}]
    from_chat = chat.chat_prompt(model, messages)
    text = chat.render_chat(messages)[len("<bos>"):]
    from_text = model.image_prompt(text, [images["rgba"]], special=True)
    assert from_chat.ids == from_text.ids
    assert from_chat.spans == from_text.spans
    assert np.array_equal(from_chat.features[0], from_text.features[0])


def test_no_vision_tower_error(model_files, images):
    text_only = gemma3_edge.Model(model_files[0], n_ctx=512, n_threads=1)
    with pytest.raises(ValueError, match="without a vision tower"):
        text_only.generate("describe", images=[images["square"]], max_tokens=1)
    with pytest.raises(ValueError, match="vision tower"):
        text_only.create_chat_completion([{"role": "user", "content": [{"type": "image", "image": images["square"]}]}])


def test_marker_count_mismatch(model, images):
    with pytest.raises(ValueError, match="2 <start_of_image> markers but 1 images"):
        model.image_prompt("<start_of_image> and <start_of_image>", [images["square"]])


def test_images_without_markers_come_first(model, images):
    prompt = model.image_prompt("is it?", [images["square"]])
    marked = model.image_prompt("<start_of_image>is it?", [images["square"]])
    assert prompt.ids == marked.ids


def test_mmproj_width_must_match_model(model_files, default_model_file):
    with pytest.raises(ValueError, match="projects images to width 96"):
        gemma3_edge.Model(default_model_file, mmproj=model_files[1], n_ctx=512, n_threads=1)


def test_small_batch_rejected(model_files):
    with pytest.raises(ValueError, match="n_batch 128 is smaller than one image"):
        gemma3_edge.Model(model_files[0], mmproj=model_files[1], n_ctx=512, n_batch=128, n_threads=1)


def test_text_file_is_not_a_projector(model_files):
    with pytest.raises(gemma3_edge.ModelLoadError, match="general.architecture is 'gemma3', expected 'clip'"):
        vision.VisionEncoder(model_files[0], "f32", 1)


@pytest.mark.parametrize("source, message", [
    ("data:image/png;base64,@@@", "invalid base64"),
    ("data:image/png,abc", "not base64-encoded"),
    (b"not an image", "cannot read an image"),
    (42, "must be a file path"),
    ("/nonexistent/image.png", "image file not found"),
])
def test_bad_image_sources(source, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        vision.load_image(source)


def test_remote_image_url_rejected(model):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    with pytest.raises(ValueError, match="does not fetch URLs"):
        chat.chat_prompt(model, messages)


def test_eval_inputs_reject_split_image():
    prompt = vision.MultimodalPrompt(ids=[2, 5, 5, 5, 7], keys=[2, -9, -9, -9, 7], spans=[(1, 4)],
                                     features=[np.ones((3, 4), np.float32)])
    assert prompt.reuse_limit(2) == 1
    assert prompt.reuse_limit(4) == 4
    inputs = prompt.eval_inputs(1, 4)
    assert inputs["spans"] == [(0, 3)]
    assert inputs["replace"].tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="inside the image tokens"):
        prompt.eval_inputs(2, 4)
