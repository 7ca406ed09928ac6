"""Image input for Gemma 3 vision models (4B, 12B, 27B).

Preprocessing follows transformers' Gemma 3 processor (Gemma3ImageProcessorPil in
transformers 5.25). An image is converted to RGB with transparency composited onto white, and
Pan & Scan crops are optionally cut from the uint8 image. Each image is then resized to
image_size x image_size with Pillow's bilinear filter, rescaled by 1/255 (in float64, stored as
float32) and normalised with the mean and standard deviation stored in the vision file.

The prompt layout is Gemma3Processor's: each image becomes
"\\n\\n<start_of_image>" + n_tokens x <image_soft_token> + "<end_of_image>\\n\\n", the text around it
is tokenized together with those newlines, and with Pan & Scan crops the image becomes
"Here is the original image " + that sequence + " and here are some crops to help you see better "
+ one sequence per crop, joined by spaces. The soft-token embeddings replace the placeholder
token embeddings, and the soft tokens of one image attend to each other in both directions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gemma3_edge import _core

if TYPE_CHECKING:
    from PIL import Image as PILImage

START_OF_IMAGE = "<start_of_image>"
END_OF_IMAGE = "<end_of_image>"
IMAGE_SOFT_TOKEN = "<image_soft_token>"
# Text of Gemma3Processor's Pan & Scan layout (transformers 5.25, processing_gemma3.py).
PAN_AND_SCAN_INTRO = "Here is the original image "
PAN_AND_SCAN_CROPS = " and here are some crops to help you see better "
RESCALE_FACTOR = 1 / 255
CACHE_ENTRIES = 16  # encoded images (or crops) kept per model


@dataclass(frozen=True)
class PanAndScan:
    """Pan & Scan options, with Gemma3Processor's defaults.

    An image whose longer side is at least min_ratio_to_activate times its shorter side is also
    cut into 2 .. max_num_crops crops along the longer side, each at least min_crop_size pixels
    on both sides. The prompt contains the whole image and then each crop.
    """

    min_crop_size: int = 256
    max_num_crops: int = 4
    min_ratio_to_activate: float = 1.2


# Loading images ---------------------------------------------------------------------------


def load_image(source: Any) -> "PILImage.Image":
    """Open an image given as a path, bytes, a data URL ("data:image/png;base64,...") or a
    PIL image. Raises ValueError for data Pillow cannot read and FileNotFoundError for a
    missing file."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:  # Pillow is a dependency; name it if it is missing anyway
        raise ImportError("image input needs Pillow; install it with: pip install pillow") from error

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        origin = f"{len(data)} bytes of image data"
    elif isinstance(source, str) and source.startswith("data:"):
        data = decode_data_url(source)
        origin = "the data URL"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"image path is a directory, not an image file: {path}")
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        data = path.read_bytes()
        origin = str(path)
    else:
        raise TypeError(
            f"an image must be a file path, bytes, a data URL or a PIL image, got {type(source).__name__}"
        )
    try:
        # Pillow warns above MAX_IMAGE_PIXELS (about 89 million) and raises above twice that.
        # Both are refused here, because decoding such an image takes gigabytes of memory.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ValueError(f"image from {origin} is too large to decode safely: {error}; "
                         "resize it below that many pixels") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read an image from {origin}: {error}") from error
    return image


def decode_data_url(url: str) -> bytes:
    """Return the bytes of a base64 data URL such as "data:image/jpeg;base64,/9j/..."."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise ValueError("invalid data URL: expected 'data:<media type>;base64,<data>'")
    if not header.endswith(";base64"):
        raise ValueError(f"data URL '{header},...' is not base64-encoded; only base64 data URLs are supported")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"data URL has invalid base64 data: {error}") from error


def to_rgb_array(image: "PILImage.Image") -> np.ndarray:
    """Return the image as uint8 (3, height, width), transparency composited onto white as
    transformers' convert_to_rgb does."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    return np.moveaxis(np.asarray(rgb, dtype=np.uint8), -1, 0)


# Preprocessing ----------------------------------------------------------------------------


def pan_and_scan_crops(image: np.ndarray, options: PanAndScan) -> list[np.ndarray]:
    """Cut Pan & Scan crops from a (channels, height, width) image by Gemma3ImageProcessor's rule.

    Returns [] when the image is too close to square or the crops would be too small."""
    height, width = image.shape[1], image.shape[2]
    if width >= height:
        if width / height < options.min_ratio_to_activate:
            return []
        # Crops close to the aspect ratio (rounded half up), each wider than min_crop_size.
        crops_w = int(math.floor(width / height + 0.5))
        crops_w = min(int(math.floor(width / options.min_crop_size)), crops_w)
        crops_w = min(options.max_num_crops, max(2, crops_w))
        crops_h = 1
    else:
        if height / width < options.min_ratio_to_activate:
            return []
        crops_h = int(math.floor(height / width + 0.5))
        crops_h = min(int(math.floor(height / options.min_crop_size)), crops_h)
        crops_h = min(options.max_num_crops, max(2, crops_h))
        crops_w = 1
    crop_w = int(math.ceil(width / crops_w))
    crop_h = int(math.ceil(height / crops_h))
    if min(crop_w, crop_h) < options.min_crop_size:
        return []
    return [image[:, y * crop_h:(y + 1) * crop_h, x * crop_w:(x + 1) * crop_w]
            for y in range(crops_h) for x in range(crops_w)]


def resize_and_normalize(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Resize a uint8 (3, height, width) image to (3, size, size) float32 pixel values: Pillow
    bilinear resize, rescale by 1/255 in float64, then (x - mean) / std in float32."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
    resized = np.asarray(pil.resize((size, size), resample=Image.BILINEAR, reducing_gap=None))
    rescaled = (resized.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
    normalized = (rescaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(normalized, -1, 0), dtype=np.float32)


def preprocess(image: Any, image_size: int, mean: Sequence[float], std: Sequence[float],
               pan_and_scan: PanAndScan | None = None) -> list[np.ndarray]:
    """Return the pixel values of an image as the model takes them: the whole image first, then
    its Pan & Scan crops (none unless pan_and_scan is given and the image qualifies)."""
    rgb = to_rgb_array(load_image(image))
    if rgb.shape[1] < 1 or rgb.shape[2] < 1:
        raise ValueError(f"image has no pixels (size {rgb.shape[2]}x{rgb.shape[1]})")
    parts = [rgb]
    if pan_and_scan is not None:
        parts += pan_and_scan_crops(rgb, pan_and_scan)
    return [resize_and_normalize(part, image_size, mean, std) for part in parts]


# Prompt layout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A piece of an expanded prompt: text, a control token, or the soft tokens of one image
    (image is the index into the list of preprocessed images and crops)."""

    kind: str  # "text", "control" or "image"
    text: str = ""
    image: int = -1


def image_segments(first_image: int, n_crops: int) -> list[Segment]:
    """Segments that replace one image placeholder, as Gemma3Processor expands it."""

    def sequence(index: int) -> list[Segment]:
        return [Segment("text", "\n\n"), Segment("control", START_OF_IMAGE), Segment("image", image=index),
                Segment("control", END_OF_IMAGE), Segment("text", "\n\n")]

    if n_crops == 0:
        return sequence(first_image)
    segments = [Segment("text", PAN_AND_SCAN_INTRO)] + sequence(first_image) + [Segment("text", PAN_AND_SCAN_CROPS)]
    for crop in range(n_crops):
        if crop > 0:
            segments.append(Segment("text", " "))
        segments += sequence(first_image + 1 + crop)
    return segments


@dataclass
class MultimodalPrompt:
    """Token ids of a prompt with images, and what eval() needs for its image tokens.

    ids contains the placeholder id at every image soft token. keys equals ids except that each
    image's soft tokens contain a negative number derived from the image's pixels, so comparing
    keys finds the longest prefix that a cache can reuse. spans[i] is the [begin, end) range of
    image i's soft tokens and features[i] its soft-token embeddings (end - begin, d_model).
    """

    ids: list[int]
    keys: list[int]
    spans: list[tuple[int, int]] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    encode_seconds: float = 0.0  # time spent encoding images for this prompt (cache misses only)
    images_encoded: int = 0
    images_cached: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def reuse_limit(self, n: int) -> int:
        """Return n, or the start of the image whose soft tokens position n would split."""
        for begin, end in self.spans:
            if begin < n < end:
                return begin
        return n

    def eval_inputs(self, start: int, d_model: int) -> dict:
        """Keyword arguments for Context.eval over ids[start:]: embeddings, replace and spans
        (empty when no image token lies in that range)."""
        n = len(self.ids) - start
        embeddings = None
        replace = None
        spans = []
        for (begin, end), features in zip(self.spans, self.features):
            if end <= start:
                continue
            if begin < start:
                raise ValueError(f"evaluation starts at token {start}, inside the image tokens [{begin}, {end})")
            if embeddings is None:
                embeddings = np.zeros((n, d_model), np.float32)
                replace = np.zeros(n, np.bool_)
            embeddings[begin - start:end - start] = features
            replace[begin - start:end - start] = True
            spans.append((begin - start, end - start))
        if embeddings is None:
            return {}
        return {"embeddings": embeddings, "replace": replace, "spans": spans}


def _image_key(pixels: np.ndarray) -> tuple[str, int]:
    digest = hashlib.sha256(pixels.tobytes()).digest()
    # A negative int64 that never equals a token id.
    return digest.hex(), -1 - int.from_bytes(digest[:7], "little")


class VisionEncoder:
    """A loaded vision tower and projector with a cache of encoded images."""

    def __init__(self, path: str | os.PathLike, precision: str, n_threads: int) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vision projector file not found: {path}")
        self.path = path
        self._model = _core.VisionModel(str(path), precision, n_threads)
        self.config = self._model.config
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def precision(self) -> str:
        return self._model.precision

    @property
    def weight_bytes(self) -> int:
        return self._model.weight_bytes

    def layout_summary(self) -> list[str]:
        return self._model.layout_summary()

    def preprocess(self, image: Any, pan_and_scan: PanAndScan | None = None) -> list[np.ndarray]:
        c = self.config
        return preprocess(image, c["image_size"], c["image_mean"], c["image_std"], pan_and_scan)

    def encode(self, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
        """Return the soft tokens (n_tokens, projection_dim) of one preprocessed image and
        whether they came from the cache."""
        digest, _ = _image_key(pixels)
        with self._lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                return self._cache[digest], True
        tokens = self._model.encode(pixels)
        with self._lock:
            self._cache[digest] = tokens
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return tokens, False

    def encode_tower(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (soft tokens, encoder output after the final LayerNorm) of one image, uncached."""
        return self._model.encode(pixels, return_tower=True)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def build_prompt(model, segments: Sequence[Segment], images: Sequence[np.ndarray], special: bool = False,
                 add_bos: bool = True) -> MultimodalPrompt:
    """Tokenize expanded segments and encode their images into a MultimodalPrompt.

    Adjacent text segments are tokenized as one piece (with special=special), control tokens are
    added by id, and each image segment becomes n_tokens placeholder ids.
    """
    encoder: VisionEncoder = model._vision
    placeholder = image_placeholder_id(model)
    n_tokens = encoder.config["n_tokens"]
    ids: list[int] = [model.config["bos_id"]] if add_bos else []
    keys = list(ids)
    prompt = MultimodalPrompt(ids=ids, keys=keys)
    text = ""

    def flush() -> None:
        nonlocal text
        if text:
            pieces = model.tokenize(text, add_bos=False, special=special)
            ids.extend(pieces)
            keys.extend(pieces)
            text = ""

    started = time.perf_counter()
    for segment in segments:
        if segment.kind == "text":
            text += segment.text
            continue
        flush()
        if segment.kind == "control":
            token = control_token_id(model, segment.text)
            ids.append(token)
            keys.append(token)
            continue
        pixels = images[segment.image]
        features, cached = encoder.encode(pixels)
        if cached:
            prompt.images_cached += 1
        else:
            prompt.images_encoded += 1
        _, key = _image_key(pixels)
        prompt.spans.append((len(ids), len(ids) + n_tokens))
        prompt.features.append(features)
        ids.extend([placeholder] * n_tokens)
        keys.extend([key] * n_tokens)
    flush()
    prompt.encode_seconds = time.perf_counter() - started
    return prompt


def split_prompt(text: str, images: Sequence[Any], vision: VisionEncoder,
                 pan_and_scan: PanAndScan | None = None) -> tuple[list[Segment], list[np.ndarray]]:
    """Expand a text prompt whose images are marked by "<start_of_image>" (as transformers'
    Gemma3Processor takes them) into segments, and preprocess the images.

    A prompt without markers gets the images at its start, one after another. Raises
    ValueError when the number of markers differs from the number of images.
    """
    markers = text.count(START_OF_IMAGE)
    if markers == 0:
        text = START_OF_IMAGE * len(images) + text
    elif markers != len(images):
        raise ValueError(
            f"the prompt has {markers} {START_OF_IMAGE} markers but {len(images)} images were given; "
            f"put one {START_OF_IMAGE} where each image goes, or none to put all images at the start"
        )
    pieces = text.split(START_OF_IMAGE)
    segments = [Segment("text", pieces[0])]
    pixels: list[np.ndarray] = []
    for image, after in zip(images, pieces[1:]):
        parts = vision.preprocess(image, pan_and_scan)
        segments += image_segments(len(pixels), len(parts) - 1)
        pixels += parts
        segments.append(Segment("text", after))
    return segments, pixels


def image_placeholder_id(model) -> int:
    """Id of <image_soft_token>, whose embedding the image tokens replace. A vocabulary without
    it (a text-only model) gets <start_of_image>'s id, which is only a placeholder."""
    try:
        return control_token_id(model, IMAGE_SOFT_TOKEN)
    except ValueError:
        return control_token_id(model, START_OF_IMAGE)


def control_token_id(model, token: str) -> int:
    ids = model.tokenize(token, add_bos=False, special=True)
    if len(ids) != 1:
        raise ValueError(f"{model.path.name} has no {token} token, so it cannot take images")
    return ids[0]


def parse_pan_and_scan(value: Any) -> PanAndScan | None:
    """Turn the pan_and_scan argument (None/False, True, a PanAndScan or a dict of its fields)
    into options or None."""
    if value is None or value is False:
        return None
    if value is True:
        return PanAndScan()
    if isinstance(value, PanAndScan):
        options = value
    elif isinstance(value, dict):
        unknown = set(value) - {"min_crop_size", "max_num_crops", "min_ratio_to_activate"}
        if unknown:
            raise ValueError(f"unknown Pan & Scan options {sorted(unknown)}; use min_crop_size, max_num_crops, "
                             "min_ratio_to_activate")
        options = PanAndScan(**value)
    else:
        raise TypeError(f"pan_and_scan must be true, false or a dict of options, got {type(value).__name__}")
    if options.min_crop_size < 1 or options.max_num_crops < 1 or not options.min_ratio_to_activate >= 1.0:
        raise ValueError(f"invalid Pan & Scan options {options}: min_crop_size >= 1, max_num_crops >= 1 and "
                         "min_ratio_to_activate >= 1 are required")
    return options


def bench_image_encode(encoder: VisionEncoder, repetitions: int = 3, seed: int = 0) -> dict:
    """Time the vision tower on random pixel values: one warm-up encode, then `repetitions`
    timed ones (the image cache is bypassed). Returns wall-clock seconds per image (mean, stdev,
    runs) and the process's CPU seconds per image (cpu_mean), which other jobs on a shared
    machine disturb less than the wall-clock time."""
    import statistics

    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    size = encoder.config["image_size"]
    pixels = np.random.default_rng(seed).uniform(-1.0, 1.0, (3, size, size)).astype(np.float32)
    runs = []
    cpu_runs = []
    for run in range(repetitions + 1):
        started = time.perf_counter()
        cpu_started = time.process_time()
        encoder._model.encode(pixels)
        if run > 0:
            runs.append(time.perf_counter() - started)
            cpu_runs.append(time.process_time() - cpu_started)
    return {
        "mean": statistics.fmean(runs),
        "stdev": statistics.stdev(runs) if len(runs) > 1 else 0.0,
        "runs": runs,
        "cpu_mean": statistics.fmean(cpu_runs),
        "n_patches": encoder.config["n_patches"],
        "n_tokens": encoder.config["n_tokens"],
        "precision": encoder.precision,
        "weight_bytes": encoder.weight_bytes,
    }
