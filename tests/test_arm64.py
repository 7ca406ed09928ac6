"""ARM64 build under emulation: scripts/arm64/build_and_test.sh cross-compiles the core, the C++
unit tests and the C example with Debian's g++-aarch64-linux-gnu and runs them under qemu-user.
Skipped when the cross compiler or qemu-aarch64 is missing (.ci/run installs both)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "arm64" / "build_and_test.sh"
PROMPT = "The capital of France is"
N_TOKENS = 16

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
        reason="needs g++-aarch64-linux-gnu and qemu-user (apt-get install g++-aarch64-linux-gnu qemu-user)",
    ),
]


def x86_scalar_greedy_tokens(model_path) -> list[int]:
    """Greedy tokens of the Python API with the scalar kernels forced (a fresh process, because
    the kernel ISA is chosen once at import)."""
    code = (
        "import sys, gemma3_edge\n"
        "m = gemma3_edge.Model(sys.argv[1], n_ctx=2048, n_threads=2)\n"
        "m.generate(sys.argv[3], max_tokens=int(sys.argv[2]), temperature=0)\n"
        "print(' '.join(map(str, m.last_stats.token_ids)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(model_path), str(N_TOKENS), PROMPT], capture_output=True,
                            text=True, env={**os.environ, "GEMMA3_EDGE_ISA": "scalar"}, check=True)
    return [int(t) for t in result.stdout.split()]


@pytest.fixture(scope="module")
def arm64_run(tmp_path_factory, default_model_file) -> str:
    env = {**os.environ, "GEMMA3_EDGE_MODEL": str(default_model_file), "JOBS": "2",
           "ARM64_GENERATE_TOKENS": str(N_TOKENS), "ARM64_PROMPT": PROMPT}
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path_factory.mktemp("arm64"))], capture_output=True,
                            text=True, env=env, timeout=1500)
    assert result.returncode == 0, f"{SCRIPT.name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def program_output(run_output: str, program: str) -> str:
    """Lines the script printed between "== qemu-aarch64 .../lib/PROGRAM" and the next "== "."""
    for section in run_output.split("\n== ")[1:]:
        header, _, body = section.partition("\n")
        if header.startswith("qemu-aarch64 ") and f"/lib/{program}" in header:
            return body
    raise AssertionError(f"no output of {program} in:\n{run_output[-2000:]}")


@pytest.mark.parametrize("program", ["test_vec_ops", "test_tokenizer", "test_kernels", "test_c_api"])
def test_unit_tests_pass_under_qemu(arm64_run, program):
    section = program_output(arm64_run, program)
    summary = re.search(r"^(\d+) passed, (\d+) failed", section, flags=re.M)
    assert summary, section[-2000:]
    assert int(summary.group(1)) > 0
    assert summary.group(2) == "0"


def kernels_section(run_output: str, cpu: str, build_folder: str) -> str:
    """Output of test_kernels from BUILD_DIR/build_folder run with qemu-aarch64 -cpu cpu."""
    for section in run_output.split("\n== ")[1:]:
        header, _, body = section.partition("\n")
        if header.startswith(f"qemu-aarch64 -cpu {cpu} ") and header.endswith(f"/{build_folder}/test_kernels"):
            return body
    raise AssertionError(f"no test_kernels output for -cpu {cpu} in {build_folder}:\n{run_output[-2000:]}")


def assert_kernels_passed(section: str, isas: str) -> None:
    summary = re.search(r"^(\d+) passed, (\d+) failed", section, flags=re.M)
    assert summary, section[-2000:]
    assert int(summary.group(1)) > 0
    assert summary.group(2) == "0"
    assert re.search(rf"^ISAs tested: {isas} *$", section, flags=re.M), section[-2000:]


def test_cpu_without_dotprod_runs_scalar_kernels(arm64_run):
    # Cortex-A53 (Armv8.0) has no SDOT: the dispatcher must not pick the NEON kernels, and
    # nothing compiled with qgemm_neon.cpp's dotprod flag may run there (it would be SIGILL).
    assert_kernels_passed(kernels_section(arm64_run, "cortex-a53", "lib"), "scalar")


@pytest.mark.skipif(shutil.which("clang++") is None, reason="needs clang++ for the clang build")
@pytest.mark.parametrize("cpu,isas", [("max", "scalar neon"), ("cortex-a53", "scalar")])
def test_clang_build_kernels_pass(arm64_run, cpu, isas):
    assert_kernels_passed(kernels_section(arm64_run, cpu, "clang-lib"), isas)


def test_neon_kernels_were_tested(arm64_run):
    assert re.search(r"^ISAs tested: scalar neon", arm64_run, flags=re.M)
    assert re.search(r"^vector kernel sets tested against scalar: neon", arm64_run, flags=re.M)


def test_scalar_greedy_tokens_match_x86(arm64_run, default_model_file):
    line = re.search(r"^arm64 greedy tokens isa=scalar: (.*)$", arm64_run, flags=re.M)
    assert line, arm64_run[-2000:]
    arm64 = [int(t) for t in line.group(1).split()]
    assert len(arm64) == N_TOKENS
    assert arm64 == x86_scalar_greedy_tokens(default_model_file)


def test_neon_generation_runs(arm64_run):
    line = re.search(r"^arm64 greedy tokens isa=default: (.*)$", arm64_run, flags=re.M)
    assert line and len(line.group(1).split()) == N_TOKENS
