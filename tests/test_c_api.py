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

