#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for SECONDS_PER_TARGET
# (default 20), one after another. Prints one line per target with its
# executions and whether it crashed; exits non-zero if a target failed to
# build, crashed or did not run.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# Corpora grow under fuzz/corpus/TARGET from the seeds in fuzz/seeds/TARGET;
# crashes land in fuzz/artifacts/TARGET (both gitignored); logs in
# fuzz/target/run-logs/TARGET.log.
# Env: FUZZ_TARGETS="a b" to run only some; FUZZ_BUILD_TIMEOUT (s, default
# 3600); FUZZ_JOBS (cargo -j); FUZZ_RUNS=N to stop each target after N
# executions (within SECONDS_PER_TARGET); FUZZ_SANITIZER (cargo fuzz -s:
# address by default, none for long runs of safe Rust at several times the
# speed). Bugs found so far: fuzz/known, fuzz/README.md.
set -uo pipefail

SECONDS_PER_TARGET=${1:-20}
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
cd "$(dirname "$0")"

BUILD_TIMEOUT=${FUZZ_BUILD_TIMEOUT:-3600}
# Debug assertions and overflow checks on: an arithmetic overflow is a bug
# the fuzzer should report, not wrap silently as in a release build.
FUZZ_FLAGS=(--debug-assertions)
if [ -n "${FUZZ_JOBS:-}" ]; then
    FUZZ_FLAGS+=(--jobs "$FUZZ_JOBS")
fi
if [ -n "${FUZZ_SANITIZER:-}" ]; then
    FUZZ_FLAGS+=(--sanitizer "$FUZZ_SANITIZER")
fi
RUN_FLAGS=()
if [ -n "${FUZZ_RUNS:-}" ]; then
    RUN_FLAGS+=(-runs="$FUZZ_RUNS")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    timeout 1200 cargo install cargo-fuzz --locked || {
        echo "FAIL: cannot install cargo-fuzz" >&2
        exit 1
    }
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain (cargo-fuzz needs it)"
    timeout 1200 rustup toolchain install nightly --profile minimal || {
        echo "FAIL: cannot install the nightly toolchain" >&2
        exit 1
    }
fi

mapfile -t ALL < <(cargo fuzz list 2>/dev/null)
if [ ${#ALL[@]} -eq 0 ]; then
    echo "FAIL: cargo fuzz list found no targets" >&2
    exit 1
fi
read -r -a TARGETS <<<"${FUZZ_TARGETS:-${ALL[*]}}"

echo "== building ${#TARGETS[@]} targets (cargo +nightly fuzz build)"
start=$(date +%s)
if ! timeout "$BUILD_TIMEOUT" cargo +nightly fuzz build "${FUZZ_FLAGS[@]}"; then
    echo "FAIL: build failed or took over ${BUILD_TIMEOUT}s" >&2
    exit 1
fi
echo "== built in $(($(date +%s) - start))s"
HOST=$(rustc +nightly -vV | sed -n 's/^host: //p')
BIN=target/$HOST/release

mkdir -p target/run-logs
failed=0
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # New inputs go to corpus/ (the first directory); seeds/ is read only.
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    extra=()
    [ -f "dicts/$t.dict" ] && extra+=(-dict="dicts/$t.dict")
    log="target/run-logs/$t.log"
    # -max_total_time stops libFuzzer; timeout is the backstop for a hang
    # the fuzzer itself cannot end (a single input stuck past -timeout).
    # The binaries just built are run directly (`cargo fuzz run` would
    # rebuild first if a source changed since, inside the time budget).
    timeout --kill-after=10 $((SECONDS_PER_TARGET + 60)) \
        "$BIN/$t" "${dirs[@]}" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${extra[@]}" "${RUN_FLAGS[@]}" >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    crash=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
    if [ $rc -eq 0 ] && [ -n "$execs" ]; then
        status="ok"
    elif [ -n "$crash" ]; then
        status="CRASHED ($crash)"
        failed=1
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        status="TIMED OUT (rc $rc)"
        failed=1
    else
        status="FAILED (rc $rc, see fuzz/$log)"
        failed=1
    fi
    line=$(printf '%-18s executions=%-10s crashed=%s' "$t" "${execs:-?}" "$status")
    echo "$line"
    summary+=("$line")
    if [ $failed -ne 0 ] && [ $rc -ne 0 ]; then
        # The failing input and the stack, for the CI log.
        grep -E '^(==[0-9]+==|thread|SUMMARY|    #[0-9]+ )' "$log" | head -40 >&2
    fi
done

echo "== summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
exit $failed
