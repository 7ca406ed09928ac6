#!/usr/bin/env bash
# Builds the C++ core, the tests/cpp unit tests and tests/fuzz/generate_driver.cpp with clang's
# AddressSanitizer and UndefinedBehaviorSanitizer, then runs them; any sanitizer report fails
# the run. The driver and the C API test generate text on the default model when it is
# installed (its path comes from `gemma3_edge.default_model_path()`, or GEMMA3_EDGE_MODEL).
#
#   scripts/run_sanitizers.sh              build and run everything
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
SANITIZE_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

for tool in clang++ cmake; do
  command -v "$tool" >/dev/null || { echo "run_sanitizers.sh: $tool not found; install clang, libclang-rt-dev and cmake" >&2; exit 2; }
done

# The build lock of scripts/dev-build.sh also serialises this build, so the two never share
# the 2 cores at once.
exec 9>/tmp/gemma3-edge-sanitize-build.lock
flock 9
cmake -S . -B "$BUILD_DIR" -DGEMMA3_EDGE_PYTHON=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS="-O1 -g $SANITIZE_FLAGS -fsanitize=fuzzer-no-link" \
  -DCMAKE_EXE_LINKER_FLAGS="$SANITIZE_FLAGS" -DCMAKE_SHARED_LINKER_FLAGS="$SANITIZE_FLAGS" >/dev/null
cmake --build "$BUILD_DIR" --target gemma3_edge_core -j "$JOBS" >/dev/null
[[ "${1:-}" == "--build-only" ]] && exit 0

tests=()
for source in tests/cpp/*.cpp; do
  name=$(basename "$source" .cpp)
  cmake --build "$BUILD_DIR" --target "$name" -j "$JOBS" >/dev/null
  tests+=("$BUILD_DIR/$name")
done
clang++ -std=c++17 -O1 -g $SANITIZE_FLAGS -Isrc/cpp -Iinclude tests/fuzz/generate_driver.cpp \
  "$BUILD_DIR/libgemma3_edge_core.a" -lpthread -o "$BUILD_DIR/generate_driver"
flock -u 9

MODEL=${GEMMA3_EDGE_MODEL:-$(python -c 'import gemma3_edge; print(gemma3_edge.default_model_path())' 2>/dev/null || true)}
export GEMMA3_EDGE_MODEL=$MODEL
# detect_leaks: LeakSanitizer reports memory still allocated at exit. halt_on_error and
# abort_on_error make any report end the program with a non-zero status.
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
for program in "${tests[@]}"; do
  echo "== $program"
  "$program" "$MODEL" | tail -n 3 || { echo "FAILED: $program" >&2; status=1; }
done
echo "== $BUILD_DIR/generate_driver $MODEL"
"$BUILD_DIR/generate_driver" "$MODEL" || { echo "FAILED: generate_driver" >&2; status=1; }
exit $status
