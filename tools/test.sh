#!/usr/bin/env bash
# The single test command for ringmon (CI runs it through .ci/run).
#
#   bash tools/test.sh
#
# Steps: install system dependencies, rustfmt check, clippy, release build,
# Rust unit + integration tests, the podman suite (tests/podman.rs: the real
# podman 4.3.1 with conmon_path pointing at ringmon, once), a fuzz smoke run of every cargo-fuzz target
# (tools/fuzz.sh; skipped without a nightly toolchain and cargo-fuzz), then
# the Go client compatibility suites
# once per OCI runtime: tests/go (the upstream conmon-rs Go client v1.0.1)
# and tests/go-legacy (the pre-1.0 client v0.7.3, legacy wire layout, the
# same cases through symlinked test files; both include the tracing export
# check against an OTLP/gRPC receiver built from grpc-go and the official OTLP
# protobuf module, fetched by `go mod download`). The integration tests and the Go
# suites run once per engine backend (io_uring, epoll); the unit tests cover
# both backends in one run.
#
# Must run as root (containers are created). Exits non-zero if any step
# fails. Lint and test steps keep going after a failure so one run reports
# everything; a failed build stops the run.
#
# Environment knobs:
#   RINGMON_TEST_RUNTIMES  OCI runtimes to test (default "/usr/sbin/runc /usr/bin/crun")
#   RINGMON_TEST_BACKENDS  engine backends to test (default "uring epoll"); the
#                          server under test gets RINGMON_IO_BACKEND from it
#   RINGMON_FAIL_FAST=1    stop at the first failing step
#   RINGMON_SKIP_DEPS=1    do not run tools/install-deps.sh
#   RINGMON_FUZZ_SECONDS   seconds per fuzz target in the fuzz smoke step
#                          (default 15; 0 skips the step)
#   GO_TEST_TIMEOUT        per-runtime go test timeout (default 10m)
#   GO_TEST_RUN            passed to go test -run (default: all tests)
#   RINGMON_GO_SUITES      Go modules to run (default "go go-legacy go-stream", dirs under tests/)
#   RINGMON_GO_ONLY=1      only run the Go suites, against $RINGMON_BINARY if set
#                          (default target/release/ringmon); for quick reruns
#   RINGMON_TEST_KEEPER_KILLS  1 (default): the Go suites also run TestKeeperKillLoop
#                          (tests/go and tests/go-legacy: the Go client's create, exec
#                          sync and attach rounds while the worker is killed 1.5 s
#                          after each start, at least 10 kills); 0 skips it
set -euo pipefail
export RINGMON_TEST_KEEPER_KILLS="${RINGMON_TEST_KEEPER_KILLS:-1}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Toolchains installed outside of apt (rustup, the Go tarball) may be missing
# from PATH in a minimal environment such as CI.
for dir in "${HOME:-/root}/.cargo/bin" /usr/local/go/bin; do
    if [[ -d "$dir" && ":$PATH:" != *":$dir:"* ]]; then
        PATH="$dir:$PATH"
    fi
done
export PATH

export RINGMON_TEST_RUNTIMES="${RINGMON_TEST_RUNTIMES:-/usr/sbin/runc /usr/bin/crun}"
RINGMON_TEST_BACKENDS="${RINGMON_TEST_BACKENDS:-uring epoll}"
GO_TEST_TIMEOUT="${GO_TEST_TIMEOUT:-10m}"
GO_TEST_RUN="${GO_TEST_RUN:-}"
RINGMON_GO_SUITES="${RINGMON_GO_SUITES:-go go-legacy go-stream}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GO_ONLY="${RINGMON_GO_ONLY:-0}"
FUZZ_SECONDS="${RINGMON_FUZZ_SECONDS:-15}"
if [[ "$GO_ONLY" == 1 && -n "${RINGMON_BINARY:-}" ]]; then
    RINGMON_BINARY="$(cd "$(dirname "$RINGMON_BINARY")" && pwd)/$(basename "$RINGMON_BINARY")"
else
    RINGMON_BINARY="$TARGET_DIR/release/ringmon"
fi
export RINGMON_BINARY
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

START=$SECONDS
declare -a RESULTS=()
FAILED=0

section() {
    printf '\n==============================================================\n'
    printf '== %s\n' "$*"
    printf '==============================================================\n'
}

# step NAME CMD...: run a step, record its result, keep going (unless
# RINGMON_FAIL_FAST=1).
step() {
    local name=$1 t0=$SECONDS rc=0
    shift
    section "$name"
    "$@" || rc=$?
    local took=$((SECONDS - t0))
    if ((rc == 0)); then
        RESULTS+=("ok      ${took}s  $name")
    else
        RESULTS+=("FAILED  ${took}s  $name (exit $rc)")
        FAILED=1
        if [[ "${RINGMON_FAIL_FAST:-0}" == 1 ]]; then
            summary
            exit 1
        fi
    fi
    return 0
}

summary() {
    section "Summary ($((SECONDS - START))s)"
    local r
    for r in "${RESULTS[@]}"; do
        printf '  %s\n' "$r"
    done
    if ((FAILED)); then
        printf '\nRESULT: FAILED\n'
    else
        printf '\nRESULT: all steps ok\n'
    fi
}

# shellcheck disable=SC2317  # invoked indirectly through step
go_suite() {
    local suite=$1 runtime=$2 backend=$3
    if [[ ! -x "$runtime" ]]; then
        echo "OCI runtime $runtime not found" >&2
        return 1
    fi
    local args=(test -count=1 -v -timeout "$GO_TEST_TIMEOUT")
    if [[ -n "$GO_TEST_RUN" ]]; then
        args+=(-run "$GO_TEST_RUN")
    fi
    (cd "$ROOT/tests/$suite" &&
        RUNTIME_BINARY="$runtime" RINGMON_IO_BACKEND="$backend" go "${args[@]}" ./...)
}

# The client each Go module pins, for the step names.
go_client_version() {
    sed -n 's|^[[:space:]]*\(require \)\{0,1\}github.com/containers/conmon-rs \(v[^ ]*\).*|\2|p' \
        "$ROOT/tests/$1/go.mod" | head -n 1
}

# The journald log driver tests need a journal on /run/systemd/journal/socket.
# PID 1 may not be systemd (containers, CI VMs): then start systemd-journald by
# hand, detached and left running (it creates its sockets itself and stores
# into /run/log/journal). The tests check again themselves (tests/common/
# journal.rs, tests/go/journal_test.go) and fall back to a stand-in listener
# on machines without journald; this only makes the common case explicit.
start_journald() {
    local bin
    for bin in /lib/systemd/systemd-journald /usr/lib/systemd/systemd-journald ""; do
        [[ -x "$bin" ]] && break
    done
    if [[ -z "$bin" ]]; then
        echo "no systemd-journald: the journald tests use their stand-in listener"
        return 0
    fi
    if pgrep -x systemd-journal >/dev/null; then
        echo "systemd-journald is running"
        return 0
    fi
    echo "starting $bin"
    mkdir -p /run/systemd/journal
    rm -f /run/systemd/journal/socket # left by a dead journald
    setsid "$bin" </dev/null >/dev/null 2>&1 &
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S /run/systemd/journal/socket ]] && return 0
        sleep 0.1
    done
    echo "warning: $bin did not create /run/systemd/journal/socket" >&2
}

# --------------------------------------------------------------------------
if [[ "${RINGMON_SKIP_DEPS:-0}" != 1 ]]; then
    section "System dependencies (tools/install-deps.sh)"
    bash "$ROOT/tools/install-deps.sh"
fi

section "Journal for the journald log driver tests"
start_journald

if [[ "$GO_ONLY" != 1 ]]; then
    step "cargo fmt --check" cargo fmt --all -- --check
    step "cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets -- -D warnings

    section "cargo build --release"
    t0=$SECONDS
    if ! cargo build --release --bin ringmon; then
        RESULTS+=("FAILED  $((SECONDS - t0))s  cargo build --release")
        FAILED=1
        summary
        exit 1
    fi
    RESULTS+=("ok      $((SECONDS - t0))s  cargo build --release")
    "$RINGMON_BINARY" --version

    # Every integration test file except tests/podman.rs, which drives the
    # real podman through the conmon command line (no engine backend to
    # vary) and runs once, after the loop.
    integration_tests=()
    for file in tests/*.rs; do
        name=$(basename "$file" .rs)
        [[ "$name" == podman ]] || integration_tests+=(--test "$name")
    done

    first=1
    for backend in $RINGMON_TEST_BACKENDS; do
        if ((first)); then
            # Unit tests (both backends inside), doc tests, integration tests.
            step "cargo test --release (unit, integration), server on $backend (RINGMON_TEST_RUNTIMES=\"$RINGMON_TEST_RUNTIMES\")" \
                env RINGMON_IO_BACKEND="$backend" cargo test --release --lib --bins "${integration_tests[@]}"
            step "cargo test --release --doc" cargo test --release --doc
            first=0
        else
            step "cargo test --release (integration), server on $backend" \
                env RINGMON_IO_BACKEND="$backend" cargo test --release "${integration_tests[@]}"
        fi
    done

    step "podman $(podman --version 2>/dev/null | awk '{print $3}') suite (tests/podman.rs, conmon_path = ringmon)" \
        cargo test --release --test podman
fi

# A short run of every fuzz target, two at a time: fails on any crash. The
# fuzz crate's build is most of the cost. Grown corpora stay in scratch.
# shellcheck disable=SC2317  # invoked indirectly through step
fuzz_smoke() {
    FUZZ_JOBS=2 FUZZ_WORK_DIR="${TMPDIR:-/tmp}/ringmon-fuzz-smoke" \
        bash "$ROOT/tools/fuzz.sh" "$FUZZ_SECONDS"
}
if [[ "$GO_ONLY" != 1 ]]; then
    if [[ "$FUZZ_SECONDS" == 0 ]]; then
        section "fuzz smoke"
        echo "skipped: RINGMON_FUZZ_SECONDS=0"
        RESULTS+=("skipped     fuzz smoke (RINGMON_FUZZ_SECONDS=0)")
    elif rustup toolchain list 2>/dev/null | grep -q '^nightly' &&
        cargo +nightly fuzz --version >/dev/null 2>&1; then
        step "fuzz smoke (tools/fuzz.sh $FUZZ_SECONDS: every target ${FUZZ_SECONDS}s)" fuzz_smoke
    else
        section "fuzz smoke"
        echo "skipped: the fuzz targets need a nightly toolchain and cargo-fuzz"
        echo "(rustup toolchain install nightly; then tools/install-deps.sh installs cargo-fuzz)"
        RESULTS+=("skipped     fuzz smoke (no nightly toolchain or cargo-fuzz)")
    fi
fi

# shellcheck disable=SC2317  # invoked indirectly through step
go_prepare() {
    (cd "$ROOT/tests/$1" && go mod download && go vet ./...)
}
for suite in $RINGMON_GO_SUITES; do
    step "Go module download + vet (tests/$suite)" go_prepare "$suite"
done

for backend in $RINGMON_TEST_BACKENDS; do
    for runtime in $RINGMON_TEST_RUNTIMES; do
        for suite in $RINGMON_GO_SUITES; do
            step "Go client suite tests/$suite (conmon-rs $(go_client_version "$suite")) with $(basename "$runtime") ($runtime), server on $backend" \
                go_suite "$suite" "$runtime" "$backend"
        done
    done
done

summary
exit "$FAILED"
