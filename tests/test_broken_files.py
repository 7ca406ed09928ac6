"""The broken-GGUF corpus of scripts/make_broken_corpus.py. Every hostile file raises
ModelLoadError (a ValueError) naming the file and what was expected. No file crashes or hangs
the loader or makes it allocate more than the file justifies. Odd but valid files load and run.

The files are loaded one after another by a worker subprocess. A crash or a hang kills only the
worker, which is restarted for the next file, so it fails one case rather than the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT

gemma3_edge = pytest.importorskip("gemma3_edge")

spec = importlib.util.spec_from_file_location("make_broken_corpus", REPO_ROOT / "scripts" / "make_broken_corpus.py")
corpus = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = corpus  # dataclasses look their module up there
spec.loader.exec_module(corpus)

# A file whose counts claim far more than it contains may make the loader allocate only what it
# actually reads: at most the 6.5 MB header of the default model plus its vocabulary index
# (262,144 string views, 4 MiB). 64 MiB is well below the 100 MiB that reserving one table entry
# for each of 2^20 claimed tensors would take.
HOSTILE_PEAK_GROWTH = 64 * 2**20
FILE_TIMEOUT_SECONDS = 60  # the slowest case reads the 250 MB sparse real-model file once: < 5 s here

WORKER = r"""
import json, resource, sys

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0

import gemma3_edge

# A backstop against runaway allocation: private memory may grow by at most 2 GiB.
limit = status("VmData") + 2 * 2**30
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    path = line.rstrip("\n")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = status("VmRSS")
    try:
        model = gemma3_edge.Model(path, n_ctx=64, n_threads=1)
        logits = model.logits([model.config["bos_id"]])
        result = {"outcome": "loaded", "logits_shape": list(logits.shape)}
        del model
    except BaseException as error:
        result = {"outcome": "raised", "type": type(error).__name__,
                  "model_load_error": isinstance(error, gemma3_edge.ModelLoadError), "message": str(error)}
    result["peak_growth"] = status("VmHWM") - before
    print(json.dumps(result), flush=True)
"""


class Worker:
    """A subprocess that loads files one at a time and reports each outcome as a JSON line."""

    def __init__(self, log_path: Path) -> None:
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log)
        self.buffer = b""
        ready = self._read_line(120)
        if ready is None or not json.loads(ready).get("ready"):
            raise RuntimeError(f"the corpus worker did not start; see {log_path}")

    def _read_line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.process.stdout], [], [], remaining)
            if readable:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def load(self, path: Path) -> dict:
        started = time.monotonic()
        self.process.stdin.write(str(path).encode() + b"\n")
        self.process.stdin.flush()
        line = self._read_line(FILE_TIMEOUT_SECONDS)
        if line is not None:
            result = json.loads(line)
            result["seconds"] = time.monotonic() - started
            return result
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            return {"outcome": "hung", "seconds": time.monotonic() - started}
        return {"outcome": "crashed", "returncode": self.process.returncode}

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.alive():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    """Write the corpus, load every file, and return {case name: [(file, result), ...]}."""
    folder = tmp_path_factory.mktemp("broken-corpus")
    real_model = gemma3_edge.default_model_path()
    manifest = corpus.write_corpus(folder, real_model if real_model.is_file() else None)
    log_path = folder / "worker-stderr.log"
    results: dict[str, list[tuple[str, dict]]] = {}
    worker = Worker(log_path)
    try:
        for entry in manifest:
            if not worker.alive():
                worker.close()
                worker = Worker(log_path)
            result = worker.load(folder / entry["file"])
            results.setdefault(entry["name"], []).append((str(folder / entry["file"]), result))
    finally:
        worker.close()
    yield results
    shutil.rmtree(folder, ignore_errors=True)  # about 250 MB of sparse files, mostly real-model headers


def case_params():
    params = []
    for case in corpus.case_specs():
        marks = [pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.mark.parametrize("case", case_params())
def test_broken_file(case, corpus_results):
    if case.real and not gemma3_edge.default_model_path().is_file():
        pytest.skip("the default model file is not installed")
    outcomes = corpus_results[case.name]
    assert outcomes, f"{case.name}: no file was written"
    for path, result in outcomes:
        where = f"{case.name} ({Path(path).name}, {case.description})"
        assert result["outcome"] not in ("crashed", "hung"), f"{where}: the loader {result['outcome']}: {result}"
        if case.loads:
            assert result["outcome"] == "loaded", f"{where}: expected to load, got {result}"
            continue
        assert result["outcome"] == "raised", f"{where}: loaded although it is broken"
        assert result["model_load_error"], f"{where}: raised {result['type']}, not ModelLoadError: {result['message']}"
        message = result["message"]
        assert path in message, f"{where}: the message does not name the file: {message}"
        for pattern in case.expect:
            assert re.search(pattern, message), f"{where}: message does not match {pattern!r}: {message}"
        if case.hostile_count:
            growth = result["peak_growth"]
            assert growth <= HOSTILE_PEAK_GROWTH, f"{where}: peak resident memory grew by {growth / 2**20:.1f} MiB"


def test_corpus_covers_every_case_kind():
    names = {case.name for case in corpus.case_specs()}
    # One representative per family the corpus must hold; a renamed or dropped family fails here.
    for required in ["magic_ggml", "version_4", "truncated_tiny", "tensor_count_ffffffffffffffff",
                     "key_length_ffffffffffffffff", "nested_array_too_deep", "duplicate_key", "duplicate_tensor",
                     "offset_past_end", "offset_overlap", "offset_misaligned", "shape_overflow_4294967296x4294967296",
                     "tensor_type_4294967295", "tensor_type_smaller_than_bytes", "missing_blk_0_ffn_down_weight",
                     "architecture_llama", "vocabulary_smaller_than_embedding", "f32_inf_matrix",
                     "q8_0_nan_scale", "real_q4_K_d_nonfinite_0"]:
        assert required in names, f"case {required} is missing from the corpus"


# Finite but extreme weights -----------------------------------------------------------------------
# Files that load, because every weight is finite, but whose activations leave the float32 range.
# Both are committed fuzzing regression inputs, built from the seed tests/fuzz/corpus/fuzz_gguf/
# tiny_q8_0.gguf (1 layer, q8_0 matrices, f32 norm weights).

REGRESSIONS = REPO_ROOT / "tests" / "fuzz" / "regressions" / "fuzz_gguf"
# Norm weights up to 1.4e34 (a fuzzer's mutation of the seed): the activations overflow to
# infinity and the logits are NaN.
HUGE_NORMS = REGRESSIONS / "huge_norm_weights_nonfinite_activations.gguf"
# The seed with every norm weight multiplied by 1e-38: activation blocks whose max |x| is below
# 3.7e-37, where 1 / (max|x| / 127) overflows float32.
TINY_NORMS = REGRESSIONS / "tiny_norm_weights_subnormal_activation_scales.gguf"
ISAS = gemma3_edge._core.available_isas()


@pytest.fixture
def restore_isa():
    before = gemma3_edge._core.active_isa()
    yield
    gemma3_edge._core.set_isa(before)


@pytest.mark.parametrize("precision", ["quantized", "f32"])
@pytest.mark.parametrize("isa", ISAS)
def test_nan_logits_raise_in_generation(isa, precision, restore_isa):
    gemma3_edge._core.set_isa(isa)
    model = gemma3_edge.Model(HUGE_NORMS, n_ctx=16, n_threads=1, precision=precision)
    bos = model.config["bos_id"]
    # Documented: logits() returns what the forward pass computed, NaN included.
    assert np.isnan(model.logits([bos])).all()
    expected = rf"{HUGE_NORMS.name} produced NaN logits at position 0"
    with pytest.raises(FloatingPointError, match=expected):
        model.generate([bos], max_tokens=3, temperature=0)
    with pytest.raises(FloatingPointError, match=expected):
        model.create_completion([bos], max_tokens=3, temperature=0.8, seed=1)
    with pytest.raises(FloatingPointError, match=expected):
        next(model.generate([bos], max_tokens=3, stream=True))


@pytest.mark.parametrize("isa", ISAS)
def test_tiny_activations_flush_to_zero(isa, restore_isa):
    gemma3_edge._core.set_isa(isa)
    ids = [2, 5, 6]
    quantized = gemma3_edge.Model(TINY_NORMS, n_ctx=16, n_threads=1).logits(ids)
    reference = gemma3_edge.Model(TINY_NORMS, n_ctx=16, n_threads=1, precision="f32").logits(ids)
    assert np.isfinite(quantized).all()
    # The int8 activation blocks of max |x| < 3.7e-37 become 0. The f32 path computes logits
    # below 1.7e-37 for this file, so the two paths differ by less than 1e-36.
    assert np.abs(quantized - reference).max() < 1e-36
