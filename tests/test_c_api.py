"""The C library as a user gets it: build and install it with CMake (GEMMA3_EDGE_PYTHON=OFF) into a
temporary prefix, build the C example against the installed package with find_package(), and
run the example and the C API unit test (tests/cpp/test_c_api.cpp, linked to the installed
shared library) on the default model. Greedy tokens from the C example must equal the Python
API's: both run the same kernels on this CPU, so any difference is a bug, not rounding."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import gemma3_edge

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
JOBS = "2"

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("cc") is None or shutil.which("c++") is None,
    reason="cmake and a C/C++ compiler are needed to build the C library",
)


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


def run_checked(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = run(args, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class Installed:
    """Paths of the installed library, the example and the C API test built against it."""

    def __init__(self, root: Path):
        self.root = root
        self.prefix = root / "prefix"
        self.example = root / "example" / "gemma3_edge_generate"
        self.c_api_test = root / "test_c_api"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    paths = Installed(tmp_path_factory.mktemp("c_api"))
    build = paths.root / "build"
    run_checked(["cmake", "-S", REPO, "-B", build, "-DGEMMA3_EDGE_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_INSTALL_PREFIX={paths.prefix}"])
    run_checked(["cmake", "--build", build, "-j", JOBS, "--target", "gemma3_edge", "gemma3_edge_static"])
    run_checked(["cmake", "--install", build])
    run_checked(["cmake", "-S", REPO / "examples" / "c", "-B", paths.root / "example",
                 f"-DCMAKE_PREFIX_PATH={paths.prefix}"])
    run_checked(["cmake", "--build", paths.root / "example"])
    lib = paths.prefix / "lib"
    run_checked(["c++", "-std=c++17", "-O1", REPO / "tests" / "cpp" / "test_c_api.cpp", f"-I{paths.prefix / 'include'}",
                 f"-L{lib}", "-lgemma3_edge", f"-Wl,-rpath,{lib}", "-pthread", "-o", paths.c_api_test])
    return paths


@pytest.fixture(scope="module")
def python_greedy(default_model_file) -> tuple[list[int], str]:
    model = gemma3_edge.Model(default_model_file, n_ctx=2048, n_threads=2)
    text = model.generate(PROMPT, max_tokens=16, temperature=0)
    return model.last_stats.token_ids, text


def example_output(installed: Installed, *args) -> tuple[str, dict]:
    """stdout of the example and the "key: value" lines it printed to stderr."""
    result = run_checked([installed.example, *args])
    fields = dict(re.findall(r"^(\w+): ?(.*)$", result.stderr, flags=re.M))
    return result.stdout, fields


def test_install_layout(installed):
    prefix = installed.prefix
    assert (prefix / "include" / "gemma3_edge.h").is_file()
    assert (prefix / "lib" / "libgemma3_edge.a").is_file()
    assert (prefix / "lib" / "libgemma3_edge.so.0").is_symlink()
    for name in ("gemma3_edgeConfig.cmake", "gemma3_edgeConfigVersion.cmake", "gemma3_edgeTargets.cmake"):
        assert (prefix / "lib" / "cmake" / "gemma3_edge" / name).is_file(), name


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) is needed to list exported symbols")
def test_shared_library_exports_only_c_api(installed):
    symbols = run_checked(["nm", "-D", "--defined-only", installed.prefix / "lib" / "libgemma3_edge.so"]).stdout
    names = [line.split()[-1] for line in symbols.splitlines() if line.strip()]
    header = (REPO / "include" / "gemma3_edge.h").read_text()
    declared = set(re.findall(r"GEMMA3_EDGE_API [^;]*?\b(gemma3_edge_\w+)\(", header))
    assert set(names) == declared


def test_header_version_matches_package():
    header = (REPO / "include" / "gemma3_edge.h").read_text()
    version = re.search(r'#define GEMMA3_EDGE_VERSION_STRING "([^"]+)"', header).group(1)
    assert version == gemma3_edge.__version__


def test_c_api_unit_test_on_model(installed, default_model_file):
    result = run([installed.c_api_test, default_model_file], env={**os.environ, "TMPDIR": str(installed.root)})
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"^\d+ passed, 0 failed, 0 skipped$", result.stdout, flags=re.M), result.stdout[-500:]


def test_example_greedy_tokens_match_python(installed, default_model_file, python_greedy):
    tokens, text = python_greedy
    stdout, fields = example_output(installed, "-m", default_model_file, "-n", "16", "-c", "2048", "-t", "2",
                                    "--tokens", "--stats", PROMPT)
    assert [int(t) for t in fields["tokens"].split()] == tokens
    assert stdout == text + "\n"
    assert fields["completion_tokens"] == "16"
    assert fields["finish_reason"] == "length"
    assert int(fields["peak_rss_kib"]) > 0


def test_example_reports_errors(installed, tmp_path):
    missing = tmp_path / "missing.gguf"
    result = run([installed.example, "-m", missing, "hello"])
    assert result.returncode == 1
    assert "model load failed" in result.stderr
    assert str(missing) in result.stderr
    result = run([installed.example, "-m", missing, "-n", "many", "hello"])
    assert result.returncode == 2
    assert "-n must be an integer" in result.stderr


def test_example_reports_nan_logits(installed):
    # Finite but huge weights whose activations overflow float32 (docs/reliability.md): the
    # sampler must refuse the NaN logits instead of drawing a meaningless token.
    model = Path(__file__).parent / "fuzz" / "regressions" / "fuzz_gguf" / "huge_norm_weights_nonfinite_activations.gguf"
    result = run([installed.example, "-m", model, "-n", "4", "-c", "16", "hello"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the logits contain NaN" in result.stderr


def write_eos_model(path: Path) -> Path:
    """A tiny random Gemma 3 whose next token is always <eos> or <end_of_turn>.

    The LM head is the token embedding. Setting the output norm to (1, 0, ..., 0) makes every
    logit embedding[i, 0] * h0 for the normalised first hidden value h0; with embedding[eos, 0] =
    +100 and embedding[end_of_turn, 0] = -100 one of the two wins for either sign of h0."""
    import gguf
    from tiny_gguf import tiny_vocabulary, write_tiny_gemma3

    write_tiny_gemma3(path)
    end_of_turn = tiny_vocabulary()[0].index("<end_of_turn>")
    reader = gguf.GGUFReader(path, "r+")
    tensors = {t.name: t for t in reader.tensors}
    norm = tensors["output_norm.weight"].data
    norm[:] = 0.0
    norm[0] = 1.0
    embedding = tensors["token_embd.weight"].data  # (vocab, d_model) float32
    embedding[1, 0] = 100.0
    embedding[end_of_turn, 0] = -100.0
    reader.data.flush()
    return path


def test_example_stops_at_eos(installed, tmp_path):
    model = write_eos_model(tmp_path / "eos.gguf")
    stdout, fields = example_output(installed, "-m", model, "-n", "8", "-c", "64", "--tokens", "--stats", "ab ab")
    assert fields["finish_reason"] == "stop"
    assert fields["completion_tokens"] == "0"
    assert fields["tokens"].strip() == ""
    assert stdout == "\n"


def test_static_library_links(installed, default_model_file, tmp_path):
    """A C and C++ project links gemma3_edge::gemma3_edge_static and runs the example source."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "examples" / "c" / "main.c", source / "main.c")
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\n"
        "project(static_consumer C CXX)\n"
        "find_package(gemma3_edge REQUIRED CONFIG)\n"
        "add_executable(consumer main.c)\n"
        "target_link_libraries(consumer PRIVATE gemma3_edge::gemma3_edge_static)\n"
    )
    build = tmp_path / "build"
    run_checked(["cmake", "-S", source, "-B", build, f"-DCMAKE_PREFIX_PATH={installed.prefix}"])
    run_checked(["cmake", "--build", build])
    dynamic = run_checked(["ldd", build / "consumer"]).stdout if shutil.which("ldd") else ""
    assert "libgemma3_edge" not in dynamic
    result = run_checked([build / "consumer", "-m", default_model_file, "-n", "2", "-c", "64", "--tokens", PROMPT])
    assert re.search(r"^tokens: \d+ \d+$", result.stderr, flags=re.M), result.stderr


def test_write_eos_model_logits(tmp_path):
    """The EOS model really puts <eos> or <end_of_turn> on top (checked with the Python API)."""
    model = gemma3_edge.Model(write_eos_model(tmp_path / "eos.gguf"), n_ctx=64, n_threads=1)
    logits = model.next_logits(model.tokenize("ab ab"))
    assert int(np.argmax(logits)) in model.stop_token_ids



# Images through the C API, on the tiny random vision model of scripts/make_tiny_vision_model.py
# (input size 128 x 128, 256 soft tokens per image).

def _load_tiny_vision_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_vision_model",
                                                  REPO / "scripts" / "make_tiny_vision_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IMAGE_PROMPT = "Look<start_of_image>and describe it"
IMAGE_TOKENS = 12
# The tiny random model's greedy choice is the same token whatever the image. The comparison
# therefore samples at a high temperature with a fixed seed, where both APIs run the same
# sampler on logits that must be equal. At this temperature the tokens change with the image,
# even for a one-pixel shift (test_sampled_image_tokens_depend_on_image).
IMAGE_TEMPERATURE = 20.0
IMAGE_SEED = 7


@pytest.fixture(scope="module")
def tiny_vision():
    return _load_tiny_vision_script()


@pytest.fixture(scope="module")
def tiny_vision_files(tiny_vision, tmp_path_factory) -> tuple[Path, Path]:
    return tiny_vision.write_model(tmp_path_factory.mktemp("tiny-vision"))


@pytest.fixture(scope="module")
def tiny_vision_model(tiny_vision_files):
    text, mmproj = tiny_vision_files
    return gemma3_edge.Model(text, mmproj=mmproj, n_ctx=1024, n_threads=2)


def vision_images(tiny_vision) -> dict:
    """RGB images for the tiny model's 128 x 128 input: one resized down in both axes, one
    that already has the input size, one resized in height only, and the first shifted by
    one pixel."""
    square = tiny_vision.sample_images()["square"].convert("RGB")
    return {
        "resized": square,
        "exact": square.crop((0, 0, 128, 128)),
        "height_only": tiny_vision.sample_images()["tall"].convert("RGB").crop((0, 0, 128, 300)),
        "shifted": square.crop((1, 0, 200, 180)),
    }


def python_image_tokens(model, image) -> list[int]:
    model.generate(IMAGE_PROMPT, images=[image], max_tokens=IMAGE_TOKENS, temperature=IMAGE_TEMPERATURE,
                   seed=IMAGE_SEED)
    return model.last_stats.token_ids


@pytest.mark.parametrize("name", ["resized", "exact", "height_only"])
def test_example_image_tokens_match_python(installed, tiny_vision, tiny_vision_files, tiny_vision_model, tmp_path,
                                           name):
    text, mmproj = tiny_vision_files
    image = vision_images(tiny_vision)[name]
    ppm = tmp_path / "image.ppm"
    image.save(ppm, format="PPM")
    _, fields = example_output(installed, "-m", text, "--mmproj", mmproj, "--image", ppm, "-n", str(IMAGE_TOKENS),
                               "-c", "1024", "-t", "2", "--temp", str(IMAGE_TEMPERATURE), "--seed", str(IMAGE_SEED),
                               "--tokens", "--stats", IMAGE_PROMPT)
    expected = python_image_tokens(tiny_vision_model, image)
    prompt = tiny_vision_model.image_prompt(IMAGE_PROMPT, [image])
    assert int(fields["prompt_tokens"]) == len(prompt.ids)
    assert [int(t) for t in fields["tokens"].split()] == expected


def test_sampled_image_tokens_depend_on_image(tiny_vision, tiny_vision_model):
    # Guards the comparison above: equal tokens mean equal pixels, not a model that ignores them.
    images = vision_images(tiny_vision)
    reference = python_image_tokens(tiny_vision_model, images["resized"])
    for name in ("exact", "height_only", "shifted"):
        assert python_image_tokens(tiny_vision_model, images[name]) != reference, name


RESIZE_PROBE = r"""
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "image_preprocess.h"
// Reads width, height and size from argv, width * height * 3 bytes from stdin, and writes the
// resized size * size * 3 bytes to stdout.
int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const long width = std::atol(argv[1]), height = std::atol(argv[2]), size = std::atol(argv[3]);
  std::vector<unsigned char> rgb(width * height * 3);
  if (std::fread(rgb.data(), 1, rgb.size(), stdin) != rgb.size()) return 3;
  const std::vector<unsigned char> out = g3e::resize_bilinear_rgb(rgb.data(), width, height, 3 * width, size);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}
"""


@pytest.fixture(scope="module")
def resize_probe(installed) -> Path:
    """The C++ resize, linked from the installed static library (which contains the internal
    functions; only the shared library hides them)."""
    source = installed.root / "resize_probe.cpp"
    source.write_text(RESIZE_PROBE)
    binary = installed.root / "resize_probe"
    run_checked(["c++", "-std=c++17", "-O1", source, f"-I{REPO / 'src' / 'cpp'}", installed.prefix / "lib" / "libgemma3_edge.a",
                 "-pthread", "-o", binary])
    return binary


@pytest.mark.parametrize("width,height,size", [(200, 180, 128), (900, 300, 128), (37, 53, 128), (128, 300, 128),
                                               (300, 128, 128), (128, 128, 128), (5, 3, 7), (1, 1, 4), (640, 480, 896)])
def test_resize_matches_pillow(resize_probe, tiny_vision, width, height, size):
    from PIL import Image

    image = tiny_vision.sample_images()["wide"].convert("RGB").resize((width, height), Image.NEAREST)
    result = subprocess.run([str(resize_probe), str(width), str(height), str(size)], input=image.tobytes(),
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    expected = np.asarray(image.resize((size, size), resample=Image.BILINEAR, reducing_gap=None))
    ours = np.frombuffer(result.stdout, np.uint8).reshape(size, size, 3)
    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} of {ours.size} bytes differ"


IMAGE_REUSE_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "gemma3_edge.h"
/* Prints "NAME tokens: ..." and "NAME cached=N" for image A (one token) then image B (12
 * tokens) on one session, so B may reuse A's cache, and for image B on a fresh session.
 * argv: model, mmproj, then width, height and the path of raw RGB bytes for A and for B. */
static int on_token(int32_t token, const char* text, size_t len, void* user_data) {
  (void)text; (void)len; (void)user_data;
  if (token >= 0) printf(" %d", (int)token);
  return 0;
}
static int run(gemma3_edge_session* s, const char* name, const char* path, int w, int h, int max_tokens) {
  unsigned char* rgb = malloc((size_t)w * h * 3);
  FILE* f = fopen(path, "rb");
  if (f == NULL || rgb == NULL || fread(rgb, 1, (size_t)w * h * 3, f) != (size_t)w * h * 3) return 1;
  fclose(f);
  if (gemma3_edge_session_add_image(s, rgb, w, h, 3 * w) != GEMMA3_EDGE_OK) return 1;
  free(rgb);
  gemma3_edge_generate_params p = gemma3_edge_generate_params_default();
  p.max_tokens = max_tokens;
  p.sampling.temperature = 20.0f;
  p.sampling.seed = 7;
  gemma3_edge_generate_result r;
  printf("%s tokens:", name);
  if (gemma3_edge_generate(s, "Look<start_of_image>and describe it", &p, on_token, NULL, &r) != GEMMA3_EDGE_OK) {
    printf("\nerror: %s\n", gemma3_edge_last_error());
    return 1;
  }
  printf("\n%s cached=%d\n", name, (int)r.cached_prompt_tokens);
  return 0;
}
int main(int argc, char** argv) {
  if (argc != 9) return 2;
  gemma3_edge_model* m = NULL;
  if (gemma3_edge_model_load_with_mmproj(argv[1], argv[2], NULL, &m) != GEMMA3_EDGE_OK) return 1;
  gemma3_edge_session_params sp = gemma3_edge_session_params_default();
  sp.n_ctx = 1024;
  sp.n_threads = 2;
  gemma3_edge_session *s1 = NULL, *s2 = NULL;
  if (gemma3_edge_session_create(m, &sp, &s1) != GEMMA3_EDGE_OK) return 1;
  if (gemma3_edge_session_create(m, &sp, &s2) != GEMMA3_EDGE_OK) return 1;
  int status = run(s1, "first", argv[5], atoi(argv[3]), atoi(argv[4]), 1) ||
               run(s1, "second", argv[8], atoi(argv[6]), atoi(argv[7]), 12) ||
               run(s2, "fresh", argv[8], atoi(argv[6]), atoi(argv[7]), 12);
  gemma3_edge_session_free(s1);
  gemma3_edge_session_free(s2);
  gemma3_edge_model_free(m);
  return status;
}
"""


def test_image_prompt_cache_reuse(installed, tiny_vision, tiny_vision_files, tiny_vision_model, tmp_path):
    # The same text with another image may reuse at most the tokens before the image. After a
    # one-token first call the cache could be truncated to all but the last prompt token, so a
    # cache that matched image tokens by id would reuse image A's keys for image B. The tiny
    # model's 64-token sliding window no longer contains the tokens before the image, so here the
    # only valid reuse is zero tokens.
    source = tmp_path / "reuse.c"
    source.write_text(IMAGE_REUSE_PROGRAM)
    binary = tmp_path / "reuse"
    lib = installed.prefix / "lib"
    run_checked(["cc", "-std=c99", "-O1", source, f"-I{installed.prefix / 'include'}", f"-L{lib}", "-lgemma3_edge",
                 f"-Wl,-rpath,{lib}", "-o", binary])
    images = vision_images(tiny_vision)
    args = []
    for name in ("resized", "exact"):
        raw = tmp_path / f"{name}.rgb"
        raw.write_bytes(images[name].tobytes())
        args += [images[name].width, images[name].height, raw]
    text, mmproj = tiny_vision_files
    output = run_checked([binary, text, mmproj, *args]).stdout
    tokens = dict(re.findall(r"^(\w+) tokens:(.*)$", output, flags=re.M))
    cached = {name: int(n) for name, n in re.findall(r"^(\w+) cached=(\d+)$", output, flags=re.M)}
    first_image_token = tiny_vision_model.image_prompt(IMAGE_PROMPT, [images["exact"]]).spans[0][0]
    assert tokens["second"].split() == tokens["fresh"].split()
    assert cached["first"] == 0
    assert cached["second"] <= first_image_token
    assert cached["fresh"] == 0


def test_example_image_errors(installed, tiny_vision, tiny_vision_files, tmp_path):
    text, mmproj = tiny_vision_files
    ppm = tmp_path / "image.ppm"
    vision_images(tiny_vision)["exact"].save(ppm, format="PPM")

    result = run([installed.example, "-m", text, "--image", ppm, "-n", "1", "hello"])
    assert result.returncode == 1
    assert "model has no vision tower" in result.stderr
    assert "gemma3_edge_model_load_with_mmproj" in result.stderr

    result = run([installed.example, "-m", text, "--mmproj", mmproj, "--image", ppm, "-n", "1",
                  "<start_of_image>one<start_of_image>two"])
    assert result.returncode == 1
    assert "2 <start_of_image> markers but 1 images" in result.stderr

    result = run([installed.example, "-m", text, "--mmproj", text, "-n", "1", "hello"])
    assert result.returncode == 1
    assert "model load failed" in result.stderr
    assert str(text) in result.stderr

    not_ppm = tmp_path / "image.png"
    vision_images(tiny_vision)["exact"].save(not_ppm, format="PNG")
    result = run([installed.example, "-m", text, "--mmproj", mmproj, "--image", not_ppm, "-n", "1", "hello"])
    assert result.returncode == 1
    assert "is not a binary PPM" in result.stderr

    # A 1 x 20000 strip: its resize would first widen every row to the input size.
    tall = tmp_path / "tall.ppm"
    tall.write_bytes(b"P6\n1 20000\n255\n" + bytes(3 * 20000))
    result = run([installed.example, "-m", text, "--mmproj", mmproj, "--image", tall, "-n", "1", "hello"])
    assert result.returncode == 1
    assert "1x20000 exceeds 16384 pixels on a side" in result.stderr
