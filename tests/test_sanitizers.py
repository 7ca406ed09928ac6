"""The C++ core under AddressSanitizer and UndefinedBehaviorSanitizer (scripts/run_sanitizers.sh:
unit tests and a short generation on the default model) and under libFuzzer for a bounded time
(scripts/run_fuzzers.sh). Skipped without clang, its sanitizer runtimes and cmake (.ci/run
installs them: Debian packages clang, libclang-rt-dev, cmake)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# libFuzzer time per target; the two targets plus the instrumented build take about 5 minutes
# on the 2-core CI machine.
FUZZ_SECONDS = int(os.environ.get("G3E_FUZZ_SECONDS", "60"))
BUILD_TIMEOUT = 1800  # a cold sanitizer build of the core on 2 busy cores took 8 minutes


def missing_toolchain() -> str | None:
    for tool in ("clang++", "cmake"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    for runtime in ("libclang_rt.asan-x86_64.a", "libclang_rt.fuzzer-x86_64.a"):
        found = subprocess.run(["clang++", f"-print-file-name={runtime}"], capture_output=True, text=True).stdout.strip()
        if not Path(found).is_file():
            return f"clang runtime {runtime} not found (Debian package libclang-rt-dev)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_toolchain() is not None,
                                                   reason=f"sanitizer toolchain: {missing_toolchain()}")]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT + 10 * 60)


def test_core_under_sanitizers():
    result = run(["bash", "scripts/run_sanitizers.sh"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"scripts/run_sanitizers.sh failed:\n{output[-6000:]}"
    assert "runtime error" not in output, output[-6000:]
    assert "ERROR: AddressSanitizer" not in output, output[-6000:]
    assert "generate_driver: all checks passed" in output or "no model path given" in output, output[-3000:]


def test_fuzzers_find_nothing():
    result = run(["bash", "scripts/run_fuzzers.sh", str(FUZZ_SECONDS)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"scripts/run_fuzzers.sh found a crash or failed:\n{output[-6000:]}"
    counts = dict(re.findall(r"^(fuzz_\w+): (\d+) executions", result.stdout, flags=re.MULTILINE))
    assert set(counts) == {"fuzz_gguf", "fuzz_tokenizer"}, result.stdout
    for target, executions in counts.items():
        assert int(executions) > 0, f"{target} ran no inputs"
