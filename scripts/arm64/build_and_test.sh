#!/usr/bin/env bash
# Cross-compiles the C++ core, the C++ unit tests and the C example for 64-bit Arm Linux with
# Debian's g++-aarch64-linux-gnu, and runs them under qemu-user (qemu-aarch64):
#   1. test_vec_ops, test_tokenizer and test_kernels (every ISA the emulated CPU has, NEON
#      with dotprod included, against the scalar reference), and test_kernels again on an
#      emulated Cortex-A53, which has no dotprod, so only the scalar kernels may run there;
#   2. test_c_api on the model; when clang++ is installed, test_kernels built with clang
#      (toolchain-aarch64-linux-gnu-clang.cmake) on both emulated CPUs;
#   3. a greedy generation with the C example, once with GEMMA3_EDGE_ISA=scalar and once with
#      the default (NEON) kernels, printed as "arm64 greedy tokens isa=NAME: ID ID ...".
# When the gemma3_edge Python package is importable, step 3 is compared with the x86-64
# Python API on the same settings. With the scalar ISA forced on both sides the tokens must be
# equal, or the script fails. The default ISAs (NEON here, AVX2 or AVX-512 on x86-64) are
# compared for information only, because their float sums differ in order. That flips the
# rounding of some int8 activations, which on the default model moves logits by about as much
# as the int8 quantization itself (0.2 to 0.7 after a few tokens), enough to change a near-tie.
#
# Usage: scripts/arm64/build_and_test.sh [BUILD_DIR]
# Environment: GEMMA3_EDGE_MODEL (default: gemma3_edge.default_model_path()), JOBS (default 2),
# ARM64_GENERATE_TOKENS (default 16), ARM64_PROMPT (default "The capital of France is").
# Needs: apt-get install g++-aarch64-linux-gnu qemu-user
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TMPDIR:-/tmp}/gemma3-edge-arm64}
jobs=${JOBS:-2}
n_tokens=${ARM64_GENERATE_TOKENS:-16}
prompt=${ARM64_PROMPT:-"The capital of France is"}
toolchain="$repo/scripts/arm64/toolchain-aarch64-linux-gnu.cmake"
# qemu-aarch64 finds the Arm dynamic loader and libraries here.
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu

for tool in aarch64-linux-gnu-g++ qemu-aarch64 cmake; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool not found; install it with: apt-get install g++-aarch64-linux-gnu qemu-user cmake" >&2
    exit 2
  fi
done

model=${GEMMA3_EDGE_MODEL:-}
if [[ -z "$model" ]]; then
  model=$(python -c "import gemma3_edge; print(gemma3_edge.default_model_path())" 2>/dev/null || true)
fi
if [[ -z "$model" || ! -f "$model" ]]; then
  echo "error: no model file; set GEMMA3_EDGE_MODEL to a Gemma 3 GGUF file" >&2
  exit 2
fi

echo "== configure and build for aarch64 in $build"
mkdir -p "$build"
# -ffp-contract=off: GCC fuses a * b + c into one FMA by default on aarch64, where the x86-64
# baseline build has no FMA. Without fusion the scalar path does the same IEEE operations on
# both, so its tokens can be compared exactly. NEON intrinsics are not affected.
cmake -S "$repo" -B "$build/lib" -DCMAKE_TOOLCHAIN_FILE="$toolchain" -DGEMMA3_EDGE_PYTHON=OFF \
  -DCMAKE_CXX_FLAGS=-ffp-contract=off -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$build/prefix" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build/lib" -j "$jobs" --target test_vec_ops test_tokenizer test_kernels test_c_api \
  gemma3_edge gemma3_edge_static
cmake --install "$build/lib" >/dev/null
cmake -S "$repo/examples/c" -B "$build/example" -DCMAKE_TOOLCHAIN_FILE="$toolchain" \
  -DCMAKE_PREFIX_PATH="$build/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build/example" -j "$jobs"
aarch64-linux-gnu-readelf -h "$build/example/gemma3_edge_generate" | grep -q "Machine: *AArch64" ||
  { echo "error: the example is not an aarch64 executable" >&2; exit 1; }

run() {
  echo "== qemu-aarch64 $*"
  qemu-aarch64 "$@"
}

run "$build/lib/test_vec_ops"
run "$build/lib/test_tokenizer"
kernels_log="$build/test_kernels.log"
run "$build/lib/test_kernels" | tee "$kernels_log" | tail -n 3
grep -q "^ISAs tested: scalar neon" "$kernels_log" ||
  { echo "error: test_kernels did not test the NEON kernels (see $kernels_log)" >&2; exit 1; }
# On a CPU without dotprod the dispatcher (HWCAP_ASIMDDP) must pick the scalar kernels, and
# no SDOT from qgemm_neon.cpp's dotprod flags may reach code that runs there.
check_kernels() {
  local binary=$1 cpu=$2 expected=$3 log="$build/test_kernels_$2_$(basename "$(dirname "$1")").log"
  run -cpu "$cpu" "$binary" | tee "$log" | tail -n 3
  grep -q "^ISAs tested: $expected *\$" "$log" ||
    { echo "error: test_kernels on $cpu did not test exactly: $expected (see $log)" >&2; exit 1; }
}
check_kernels "$build/lib/test_kernels" cortex-a53 "scalar"
run "$build/lib/test_c_api" "$model"

if command -v clang++ >/dev/null; then
  echo "== configure and build test_kernels with clang in $build/clang-lib"
  cmake -S "$repo" -B "$build/clang-lib" -DCMAKE_TOOLCHAIN_FILE="$repo/scripts/arm64/toolchain-aarch64-linux-gnu-clang.cmake" \
    -DGEMMA3_EDGE_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release >"$build/clang-configure.log" 2>&1 ||
    { cat "$build/clang-configure.log"; exit 1; }
  cmake --build "$build/clang-lib" -j "$jobs" --target test_kernels
  check_kernels "$build/clang-lib/test_kernels" max "scalar neon"
  check_kernels "$build/clang-lib/test_kernels" cortex-a53 "scalar"
else
  echo "clang++ not found: the clang build was skipped"
fi

# "scalar" forces the scalar kernels; "default" lets each CPU pick its fastest ISA.
isa_env() {
  if [[ "$1" == scalar ]]; then echo "GEMMA3_EDGE_ISA=scalar"; else echo "-u GEMMA3_EDGE_ISA"; fi
}

# Greedy generation with the C example: n_ctx 2048, 2 threads, f32 KV cache.
declare -A arm_tokens
for isa in scalar default; do
  echo "== qemu-aarch64 gemma3_edge_generate -n $n_tokens (isa=$isa)"
  # shellcheck disable=SC2046  # isa_env returns words for env
  out=$(env $(isa_env "$isa") qemu-aarch64 "$build/example/gemma3_edge_generate" -m "$model" -n "$n_tokens" \
    -c 2048 -t 2 --tokens "$prompt" 2>&1)
  echo "$out"
  arm_tokens[$isa]=$(sed -n 's/^tokens: *//p' <<<"$out")
  echo "arm64 greedy tokens isa=$isa: ${arm_tokens[$isa]}"
done

if python -c "import gemma3_edge" 2>/dev/null; then
  status=0
  for isa in scalar default; do
    # shellcheck disable=SC2046
    x86=$(env $(isa_env "$isa") python - "$model" "$n_tokens" "$prompt" <<'EOF'
import sys
import gemma3_edge
model = gemma3_edge.Model(sys.argv[1], n_ctx=2048, n_threads=2)
model.generate(sys.argv[3], max_tokens=int(sys.argv[2]), temperature=0)
print(" ".join(str(t) for t in model.last_stats.token_ids))
EOF
)
    echo "x86-64 greedy tokens isa=$isa: $x86"
    if [[ "$x86" == "${arm_tokens[$isa]}" ]]; then
      echo "tokens equal (isa=$isa)"
    elif [[ "$isa" == scalar ]]; then
      echo "error: arm64 and x86-64 greedy tokens differ with the scalar ISA" >&2
      status=1
    else
      echo "note: arm64 and x86-64 greedy tokens differ with the default ISAs (expected, see the header)"
    fi
  done
  exit $status
fi
echo "gemma3_edge Python package not importable: x86-64 comparison skipped"
