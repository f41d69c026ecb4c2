#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/) and runs each for a while, then
# prints a table: target, seconds, executions, executions per second,
# crashes. Exits non-zero if any target crashed (or did not run).
#
#   bash tools/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 600); TARGETs default to every target of
# `cargo fuzz list`. Needs a nightly toolchain and cargo-fuzz
# (tools/install-deps.sh installs cargo-fuzz when nightly is there).
#
# Each run starts from the committed seeds (fuzz/corpus/<target>) and the
# corpus grown by earlier runs; new inputs go to the scratch corpus, never
# into the repository. Crash reproducers go to the scratch artifacts dir
# (replay one: fuzz/target/<triple>/release/<target> <file>).
#
# Environment:
#   FUZZ_JOBS       targets run at once (default 1; each uses one core)
#   FUZZ_SANITIZER  cargo fuzz --sanitizer (default none: the targets are
#                   safe Rust, and no sanitizer doubles the executions;
#                   address for the unsafe in src/sys)
#   FUZZ_WORK_DIR   scratch dir for grown corpora, artifacts and logs
#                   (default ${TMPDIR:-/tmp}/ringmon-fuzz)
#   FUZZ_NICE       nice level of the fuzzing processes (default 0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

for dir in "${HOME:-/root}/.cargo/bin"; do
    if [[ -d "$dir" && ":$PATH:" != *":$dir:"* ]]; then
        PATH="$dir:$PATH"
    fi
done
export PATH

DURATION="${1:-600}"
if [[ $# -gt 0 ]]; then
    shift
fi
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: SECONDS must be a positive integer, got '$DURATION'" >&2
    exit 2
fi
JOBS="${FUZZ_JOBS:-1}"
SANITIZER="${FUZZ_SANITIZER:-none}"
WORK="${FUZZ_WORK_DIR:-${TMPDIR:-/tmp}/ringmon-fuzz}"
NICE="${FUZZ_NICE:-0}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain and cargo-fuzz (cargo +nightly install cargo-fuzz --locked)" >&2
    exit 2
fi

# The fuzz crate is its own workspace with its own target dir (fuzz/target):
# a CARGO_TARGET_DIR meant for the main crate would mix the builds.
unset CARGO_TARGET_DIR
# Debug assertions on (-a): integer overflow panics, as in a debug build.
echo "building fuzz targets (sanitizer: $SANITIZER)"
t0=$SECONDS
nice -n "$NICE" cargo +nightly fuzz build --sanitizer "$SANITIZER" --debug-assertions
echo "fuzz build took $((SECONDS - t0))s"

if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi
TRIPLE="$(rustc +nightly -vV | sed -n 's/^host: //p')"
BIN="$ROOT/fuzz/target/$TRIPLE/release"

# Longest input per target: the request head parsers need room past their
# limits (16 KiB streaming, 8 KiB metrics); everything else is fine with
# libFuzzer's default.
max_len() {
    case "$1" in
        http_head) echo 20000 ;;
        metrics_request) echo 10000 ;;
        *) echo 4096 ;;
    esac
}

run_target() {
    local target=$1
    local corpus="$WORK/corpus/$target" artifacts="$WORK/artifacts/$target/"
    mkdir -p "$corpus" "$artifacts"
    # Seeds are read from the repository, new inputs written to the scratch
    # corpus (libFuzzer writes into its first corpus dir).
    nice -n "$NICE" "$BIN/$target" \
        -max_total_time="$DURATION" \
        -print_final_stats=1 \
        -max_len="$(max_len "$target")" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts" \
        "$corpus" "$ROOT/fuzz/corpus/$target" >"$WORK/$target.log" 2>&1
}

mkdir -p "$WORK"
for target in "${TARGETS[@]}"; do
    if [[ ! -x "$BIN/$target" ]]; then
        echo "fuzz.sh: no fuzz target '$target' (see: cargo +nightly fuzz list)" >&2
        exit 2
    fi
    # Artifacts of earlier runs are not this run's crashes.
    rm -rf "$WORK/artifacts/$target"
done

echo "running ${#TARGETS[@]} targets for ${DURATION}s each, $JOBS at a time (scratch: $WORK)"
declare -A STATUS=()
running=0
for target in "${TARGETS[@]}"; do
    while ((running >= JOBS)); do
        wait -n || true
        running=$((running - 1))
    done
    (
        rc=0
        run_target "$target" || rc=$?
        echo "$rc" >"$WORK/$target.rc"
    ) &
    running=$((running + 1))
done
wait

FAILED=0
printf '\n%-20s %8s %14s %10s %8s  %s\n' target seconds executions "exec/s" crashes result
for target in "${TARGETS[@]}"; do
    log="$WORK/$target.log"
    rc=$(cat "$WORK/$target.rc" 2>/dev/null || echo "?")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    secs=${secs:-$DURATION}
    crashes=$(find "$WORK/artifacts/$target" -type f 2>/dev/null | wc -l)
    result=ok
    if [[ "$rc" != 0 ]]; then
        result="FAILED (exit $rc, see $log)"
        FAILED=1
        # A crash stops libFuzzer; a failure without an artifact counts too.
        ((crashes > 0)) || crashes=1
    elif [[ -z "$execs" ]]; then
        result="FAILED (no final stats, see $log)"
        FAILED=1
    fi
    rate=-
    if [[ -n "$execs" ]] && ((secs > 0)); then
        rate=$((execs / secs))
    fi
    printf '%-20s %8s %14s %10s %8s  %s\n' "$target" "$secs" "${execs:--}" "$rate" "$crashes" "$result"
done
if ((FAILED)); then
    # CI keeps only this output: show why each failed target stopped.
    for target in "${TARGETS[@]}"; do
        rc=$(cat "$WORK/$target.rc" 2>/dev/null || echo "?")
        if [[ "$rc" != 0 ]] || ! grep -q '^stat::number_of_executed_units' "$WORK/$target.log"; then
            echo
            echo "== $target: last lines of $WORK/$target.log"
            tail -n 40 "$WORK/$target.log"
            for artifact in "$WORK/artifacts/$target"/*; do
                [[ -f "$artifact" ]] || continue
                echo "-- $artifact ($(stat -c %s "$artifact") bytes, base64):"
                head -c 4096 "$artifact" | base64 -w 0
                echo
            done
        fi
    done
    echo
    echo "crash reproducers: $WORK/artifacts/<target>/ (replay: $BIN/<target> <file>)"
fi
exit "$FAILED"
