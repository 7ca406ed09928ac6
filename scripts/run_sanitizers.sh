#!/usr/bin/env bash
# Builds the C++ core, the tests/cpp unit tests and tests/fuzz/generate_driver.cpp with clang's
# AddressSanitizer and UndefinedBehaviorSanitizer, then runs them; any sanitizer report fails
# the run. The driver and the C API test generate text on the default model when it is
# installed (its path comes from `gemma3_edge.default_model_path()`, or GEMMA3_EDGE_MODEL).
#
#   scripts/run_sanitizers.sh              build and run everything
#   scripts/run_sanitizers.sh --build      build everything, run nothing
#   scripts/run_sanitizers.sh --run NAME   run one built program (test_kernels, ..., generate_driver)
#   scripts/run_sanitizers.sh --build-only build the instrumented core library only
#                                          (scripts/run_fuzzers.sh links its fuzzers against it)
#
# Needs clang++ with the sanitizer runtimes (Debian: clang, libclang-rt-dev) and cmake.
# Objects are also compiled with -fsanitize=fuzzer-no-link (coverage instrumentation only), so
# one build serves both this script and the fuzzers. Build folder: build/sanitize.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=build/sanitize
JOBS=${JOBS:-2}
# UBSan checks stay recoverable so that scripts/run_fuzzers.sh can apply its suppression file;
# halt_on_error=1 below still ends a program at the first report.
SANITIZE_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer"

MODE=${1:-all}
for tool in clang++ cmake; do
  command -v "$tool" >/dev/null || { echo "run_sanitizers.sh: $tool not found; install clang, libclang-rt-dev and cmake" >&2; exit 2; }
done

# Takes the lock of scripts/dev-build.sh, so this build and an editable rebuild never compete
# for the cores.
exec 9>/tmp/gemma3-edge-build.lock
if [[ "$MODE" != --run ]]; then
  flock 9
  cmake -S . -B "$BUILD_DIR" -DGEMMA3_EDGE_PYTHON=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS="-O1 -g $SANITIZE_FLAGS -fsanitize=fuzzer-no-link" \
    -DCMAKE_EXE_LINKER_FLAGS="$SANITIZE_FLAGS" -DCMAKE_SHARED_LINKER_FLAGS="$SANITIZE_FLAGS" >/dev/null
  cmake --build "$BUILD_DIR" --target gemma3_edge_core -j "$JOBS" >/dev/null
  [[ "$MODE" == --build-only ]] && exit 0

  for source in tests/cpp/*.cpp; do
    cmake --build "$BUILD_DIR" --target "$(basename "$source" .cpp)" -j "$JOBS" >/dev/null
  done
  clang++ -std=c++17 -O1 -g $SANITIZE_FLAGS -Isrc/cpp -Iinclude tests/fuzz/generate_driver.cpp \
    "$BUILD_DIR/libgemma3_edge_core.a" -lpthread -o "$BUILD_DIR/generate_driver"
  flock -u 9
fi
[[ "$MODE" == --build ]] && exit 0

MODEL=${GEMMA3_EDGE_MODEL:-$(python -c 'import gemma3_edge; print(gemma3_edge.default_model_path())' 2>/dev/null || true)}
export GEMMA3_EDGE_MODEL=$MODEL
# detect_leaks: LeakSanitizer reports memory still allocated at exit. halt_on_error and
# abort_on_error make any report end the program with a non-zero status.
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

programs=()
if [[ "$MODE" == --run ]]; then
  programs=("$2")
else
  for source in tests/cpp/*.cpp; do programs+=("$(basename "$source" .cpp)"); done
  programs+=(generate_driver)
fi
status=0
for program in "${programs[@]}"; do
  echo "== $program"
  "$BUILD_DIR/$program" "$MODEL" | tail -n 3 || { echo "FAILED: $program" >&2; status=1; }
done
exit $status
