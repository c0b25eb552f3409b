#!/usr/bin/env bash
# fuzz.sh: builds the fuzz preset (clang, libFuzzer, ASan+UBSan; build/fuzz/) and
# runs every harness in fuzz/ over its seed corpus for a while.
#
#   bash scripts/fuzz.sh [TARGET...]     all targets by default
#
# Environment: FUZZ_SECONDS   seconds per target (default 60)
#              FUZZ_JOBS      targets run at once (default 2)
#              FUZZ_ARGS      extra libFuzzer flags, e.g. "-max_len=65536"
#              FUZZ_SEED      libFuzzer's random seed (default 1, so that CI runs
#                             the same mutations each time and a landing is not
#                             failed by luck; 0: a new seed each run, for hunting)
# New inputs go to build/fuzz/corpus/<target>/ (fuzz/corpus/ stays as committed);
# a crash leaves its input in build/fuzz/artifacts/<target>/ and fails the script.
# docs/reliability.md ("Fuzzing") explains long runs and turning crashes into tests.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly TARGETS_ALL=(frame_reader envelope message shared_owner)
readonly SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
readonly JOBS=${FUZZ_JOBS:-2}
readonly SEED=${FUZZ_SEED:-1}
readonly BUILD=build/fuzz

targets=("$@")
((${#targets[@]} > 0)) || targets=("${TARGETS_ALL[@]}")

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz

# Sanitizers: any report is fatal. UBSan is non-recoverable in this build
# (-fno-sanitize-recover=undefined); the CAF suppressions are for the test suite.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Runs one target; its log goes to build/fuzz/logs/<target>.log.
run_target() {
  local t=$1
  local exe=$BUILD/fuzz/${t}_fuzzer
  local work=$BUILD/corpus/$t artifacts=$BUILD/artifacts/$t
  mkdir -p "$work" "$artifacts" "$BUILD/logs"
  local dict=()
  [[ -f fuzz/corpus/$t.dict ]] && dict=("-dict=fuzz/corpus/$t.dict")
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  "$exe" -max_total_time="$SECONDS_PER_TARGET" -seed="$SEED" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
    ${FUZZ_ARGS:-} "$work" "fuzz/corpus/$t" >"$BUILD/logs/$t.log" 2>&1
}

# Prints the figures of a finished run: executions, exec/s, coverage.
summary() {
  local t=$1 log=$BUILD/logs/$1.log
  local done_line
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  printf '%-14s %s\n' "$t" "${done_line:-no DONE line (see $log)}"
}

echo "fuzzing ${targets[*]} for ${SECONDS_PER_TARGET}s each, $JOBS at a time"
for t in "${targets[@]}"; do
  [[ -x $BUILD/fuzz/${t}_fuzzer ]] || { echo "fuzz.sh: unknown target $t" >&2; exit 2; }
done
declare -A target_of=()
failed=()
# Waits for one running target and records its outcome.
wait_one() {
  local pid=0 rc=0
  wait -n -p pid || rc=$?
  local t=${target_of[$pid]}
  unset "target_of[$pid]"
  ((rc == 0)) || failed+=("$t")
  summary "$t"
}
for t in "${targets[@]}"; do
  while ((${#target_of[@]} >= JOBS)); do wait_one; done
  run_target "$t" &
  target_of[$!]=$t
done
while ((${#target_of[@]} > 0)); do wait_one; done

if ((${#failed[@]} > 0)); then
  for t in "${failed[@]}"; do
    echo
    echo "==== $t FAILED: last lines of $BUILD/logs/$t.log ===="
    tail -n 40 "$BUILD/logs/$t.log"
    echo "crash inputs:"
    ls -l "$BUILD/artifacts/$t/"
  done
  echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${SECONDS_PER_TARGET}s without a crash"
