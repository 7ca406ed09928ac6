"""The gemma3-edge command: text on stdout, diagnostics on stderr, clear errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# The reference text: transformers (float32, eager attention) greedily continues
# "The capital of France is" on this GGUF with exactly these 30 tokens.
FRANCE_REFERENCE = (
    " the capital of the country of France. It is the largest city in France and the second largest"
    " city in Europe. It is located in the middle of"
)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gemma3_edge.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_generate_f32_prints_reference_text():
    result = run_cli("generate", "The capital of France is", "-n", "30", "--temperature", "0", "--precision", "f32", "-t", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == FRANCE_REFERENCE + "\n"
    assert "tok/s" in result.stderr


def test_generate_quantized_streams_text():
    result = run_cli("generate", "The capital of France is", "-n", "12", "--temperature", "0", "-t", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(" the capital of")
    assert "finish: length" in result.stderr


def test_info_json_reports_model_and_kv():
    result = run_cli("info", "--json", "--ctx", "2048")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["config"]["architecture"] == "gemma3"
    assert info["config"]["n_layers"] == 18
    assert info["config"]["layer_types"].count("global") == 3
    assert info["kv_cache_bytes"] > 0
    assert {t[1] for t in info["tensors"]} == {"f32", "q8_0", "q5_0", "q4_K", "q6_K"}


def test_bench_json_reports_rates_bandwidth_and_memory():
    result = run_cli("bench", "--json", "-p", "16", "-n", "8", "-r", "1", "-c", "64", "--threads-list", "1", "2")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert [r["n_threads"] for r in reports] == [1, 2]
    for report in reports:
        assert set(report["results"]) == {"pp16", "tg8"}
        assert all(r["mean"] > 0 and len(r["runs"]) == 1 for r in report["results"].values())
        assert report["read_bandwidth_gb_s"] > 0
        assert report["decode_limit_tok_s"] == pytest.approx(
            report["read_bandwidth_gb_s"] * 1e9 / report["weight_bytes_per_token"])
        # The peak is read before the bandwidth test allocates its 1 GiB buffer, because that
        # buffer would otherwise be the whole figure. The model alone is far below it.
        assert report["weight_bytes_per_token"] < report["peak_rss_bytes"] < 2**30


def test_missing_model_file_is_clear_error(tmp_path):
    result = run_cli("generate", "hi", "-m", str(tmp_path / "missing.gguf"))
    assert result.returncode == 2
    assert "model file not found" in result.stderr
    assert str(tmp_path / "missing.gguf") in result.stderr
    assert result.stdout == ""


def test_not_a_model_is_clear_error(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"hello, this is not a model" * 10)
    result = run_cli("info", str(bogus))
    assert result.returncode == 2
    assert "not a GGUF file" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_sampling_argument_is_clear_error():
    result = run_cli("generate", "hi", "--top-p", "0")
    assert result.returncode == 2
    assert "top_p must be in (0, 1]" in result.stderr


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_stops_generation_cleanly():
    process = subprocess.Popen(
        [sys.executable, "-m", "gemma3_edge.cli", "generate", "Tell me a long story.", "-n", "100000", "-t", "1",
         "--ctx", "32768"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Wait until text flows, then interrupt.
    first = process.stdout.read(1)
    assert first, process.stderr.read()
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in err
    assert "Traceback" not in err
