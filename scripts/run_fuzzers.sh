#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz/ (clang -fsanitize=fuzzer,address,undefined) against
# the instrumented core of scripts/run_sanitizers.sh, replays the committed regression inputs
# and fuzzes each target for a bounded time from its seed corpus.
#
#   scripts/run_fuzzers.sh [SECONDS_PER_TARGET]   replay, then fuzz (default 60 s per target)
#   scripts/run_fuzzers.sh replay                 replay tests/fuzz/regressions/<target>/* only
#   scripts/run_fuzzers.sh fuzz [SECONDS]         fuzz only
#
# Seeds come from tests/fuzz/corpus/<target>/ and are copied to build/fuzz/corpus-<target>/,
# where new inputs accumulate across runs; the committed seeds are never written to. A crash
# is saved under build/fuzz/artifacts/<target>/ and fails the run: commit the input under
# tests/fuzz/regressions/<target>/ as a regression test. While fuzzing (not while replaying),
# tests/fuzz/known_bugs.supp silences sanitizer reports of bugs already reported. The last line
# per fuzzed target reports libFuzzer's execution count ("<target>: N executions in S s").
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=all
SECONDS_PER_TARGET=60
case "${1:-}" in
  replay) MODE=replay ;;
  fuzz) MODE=fuzz; SECONDS_PER_TARGET=${2:-60} ;;
  "") ;;
  *) SECONDS_PER_TARGET=$1 ;;
esac

BUILD_DIR=build/sanitize
FUZZ_DIR=build/fuzz
# UBSan checks stay recoverable so that the suppression file can apply; halt_on_error below
# still ends the run at the first report that is not suppressed.
FLAGS="-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer"
TARGETS=(fuzz_gguf fuzz_tokenizer)

scripts/run_sanitizers.sh --build-only
mkdir -p "$FUZZ_DIR"
for target in "${TARGETS[@]}"; do
  clang++ $FLAGS -Isrc/cpp -Iinclude "tests/fuzz/$target.cpp" "$BUILD_DIR/libgemma3_edge_core.a" -lpthread \
    -o "$FUZZ_DIR/$target"
done

# The tokenizer target fuzzes the real Gemma 3 vocabulary when the default model is installed.
export G3E_FUZZ_MODEL=${G3E_FUZZ_MODEL:-$(python -c 'import gemma3_edge; p = gemma3_edge.default_model_path(); print(p if p.is_file() else "")' 2>/dev/null || true)}
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
UBSAN_STRICT=print_stacktrace=1:halt_on_error=1

status=0
for target in "${TARGETS[@]}"; do
  regressions=(tests/fuzz/regressions/$target/*)
  if [[ "$MODE" != fuzz && -e "${regressions[0]}" ]]; then
    echo "== $target: replaying ${#regressions[@]} regression inputs"
    for input in "${regressions[@]}"; do
      UBSAN_OPTIONS=$UBSAN_STRICT "$FUZZ_DIR/$target" "$input" >"$FUZZ_DIR/$target-replay.log" 2>&1 \
        || { echo "FAILED: $target on regression input $input; see $FUZZ_DIR/$target-replay.log" >&2
             grep -E 'runtime error|ERROR: AddressSanitizer|SUMMARY' "$FUZZ_DIR/$target-replay.log" | head -n 5 >&2 || true
             status=1; }
    done
  fi
  [[ "$MODE" == replay ]] && continue

  corpus="$FUZZ_DIR/corpus-$target"
  artifacts="$FUZZ_DIR/artifacts/$target/"
  mkdir -p "$corpus" "$artifacts"
  cp -n tests/fuzz/corpus/$target/* "$corpus/"
  # -rss_limit_mb and -malloc_limit_mb make an allocation the input cannot justify a failure.
  # 1 GiB is about twice the peaks of 60 s runs on x86-64 (fuzz_gguf 446 MB, fuzz_tokenizer
  # 480 MB with the 262,144-piece vocabulary), all under AddressSanitizer.
  log="$FUZZ_DIR/$target.log"
  if UBSAN_OPTIONS=$UBSAN_STRICT:suppressions=tests/fuzz/known_bugs.supp \
      "$FUZZ_DIR/$target" "$corpus" -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=20 \
      -rss_limit_mb=1024 -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$artifacts" >"$log" 2>&1; then
    executions=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "$target: ${executions:-?} executions in $SECONDS_PER_TARGET s"
  else
    echo "FAILED: $target found a crash; input in $artifacts, log in $log" >&2
    grep -E 'runtime error|ERROR|SUMMARY|fuzz_' "$log" | head -n 20 >&2 || true
    status=1
  fi
done
exit $status
