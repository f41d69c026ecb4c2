#!/usr/bin/env bash
# Install everything ringmon's build and test suite needs on a Debian 12
# machine, as root. Idempotent: a second run installs nothing and only
# re-checks. Detailed output goes to a log file; a short summary is printed.
#
#   bash tools/install-deps.sh
#
# Environment:
#   RINGMON_DEPS_LOG   log file (default: /tmp/ringmon-install-deps.log)
set -euo pipefail

LOG="${RINGMON_DEPS_LOG:-/tmp/ringmon-install-deps.log}"
: >"$LOG"

# Debian packages: OCI runtimes, static busybox for test rootfs images, the
# capnp compiler (build.rs), the C conmon (reference), podman 4.3.1 and tmux
# (tests/podman.rs drives the real podman, `-it` through tmux's ptys),
# prometheus and its promtool (tests/metrics.rs runs its own prometheus
# scraping ringmon), and basic tooling.
PACKAGES=(
    runc
    crun
    busybox-static
    capnproto
    conmon
    podman
    tmux
    prometheus
    iproute2
    procps
    ca-certificates
    git
    build-essential
    pkg-config
)

say() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# Toolchains installed outside of apt live here on the project machines;
# they may be missing from PATH in a minimal environment (CI).
for dir in /usr/local/go/bin "${HOME:-/root}/.cargo/bin" "${HOME:-/root}/go/bin"; do
    if [[ -d "$dir" && ":$PATH:" != *":$dir:"* ]]; then
        PATH="$dir:$PATH"
    fi
done
export PATH

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (installs packages, mounts cgroups, runs containers)"
fi

if [[ ! -r /etc/debian_version ]]; then
    say "warning: not a Debian system; package installation may fail"
fi

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != ii* ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    say "installing packages: ${missing[*]} (log: $LOG)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update >>"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        die "apt-get update failed (see $LOG)"
    fi
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        die "apt-get install failed (see $LOG)"
    fi
else
    say "packages: all ${#PACKAGES[@]} already installed"
fi

# Debian's prometheus package enables and starts a system service (under
# systemd; in a container policy-rc.d usually keeps it from starting). The
# tests run their own prometheus, with their own config, data dir and port:
# a system one would only keep running and scraping after CI is done.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]] &&
    systemctl is-enabled --quiet prometheus 2>/dev/null; then
    say "disabling the prometheus system service (the tests run their own)"
    systemctl disable --now prometheus >>"$LOG" 2>&1 || true
elif [[ -x /etc/init.d/prometheus ]]; then
    # No systemd: the package's sysvinit script may have started it (when no
    # policy-rc.d kept it from starting); stop it and keep it from booting.
    say "stopping the prometheus init.d service (the tests run their own)"
    update-rc.d prometheus disable >>"$LOG" 2>&1 || true
    service prometheus stop >>"$LOG" 2>&1 || true
fi

# ---------------------------------------------------------------------------
# 2. Required binaries
# ---------------------------------------------------------------------------
need_bin() {
    local name=$1 path
    if path=$(command -v "$name" 2>/dev/null); then
        printf '%s' "$path"
        return 0
    fi
    return 1
}

problems=()
for tool in runc crun capnp conmon podman tmux prometheus promtool busybox ps ip; do
    if ! need_bin "$tool" >/dev/null; then
        problems+=("'$tool' not found after package installation")
    fi
done
if [[ ! -x /usr/bin/busybox ]]; then
    problems+=("/usr/bin/busybox (busybox-static) missing: test rootfs images need it")
elif [[ "$(head -c4 /usr/bin/busybox | od -An -tx1 | tr -d ' \n')" != "7f454c46" ]]; then
    problems+=("/usr/bin/busybox is not an ELF binary")
fi

if cargo_path=$(need_bin cargo); then
    cargo_ver=$(cargo --version 2>/dev/null || echo "unknown")
else
    problems+=("cargo not found: install Rust with rustup (https://rustup.rs) so that cargo is in PATH or ~/.cargo/bin")
    cargo_path="-"
    cargo_ver="missing"
fi
if [[ "$cargo_path" != "-" ]]; then
    if ! cargo fmt --version >/dev/null 2>&1; then
        problems+=("rustfmt missing: run 'rustup component add rustfmt'")
    fi
    if ! cargo clippy --version >/dev/null 2>&1; then
        problems+=("clippy missing: run 'rustup component add clippy'")
    fi
fi

# cargo-fuzz, for the fuzz targets in fuzz/ (tools/fuzz.sh and the "fuzz
# smoke" step of tools/test.sh). cargo fuzz needs a nightly toolchain, so it
# is only installed where one exists; without it the smoke step is skipped.
fuzz_note="skipped: no nightly toolchain (rustup toolchain install nightly to enable fuzzing)"
if [[ "$cargo_path" != "-" ]] && command -v rustup >/dev/null 2>&1 &&
    rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if cargo fuzz --version >/dev/null 2>&1; then
        fuzz_note="$(cargo fuzz --version 2>/dev/null)"
    else
        say "installing cargo-fuzz from crates.io (a few minutes; log: $LOG)"
        if cargo +nightly install cargo-fuzz --locked >>"$LOG" 2>&1; then
            fuzz_note="$(cargo fuzz --version 2>/dev/null) (installed)"
        else
            # Optional: fuzzing is skipped, the rest of the suite is not.
            fuzz_note="warning: cargo install cargo-fuzz failed (see $LOG); fuzzing skipped"
        fi
    fi
fi

if go_path=$(need_bin go); then
    go_ver=$(go version 2>/dev/null || echo "unknown")
else
    problems+=("go not found: install Go (>= the version in tests/go/go.mod) at /usr/local/go or in PATH")
    go_path="-"
    go_ver="missing"
fi

# ---------------------------------------------------------------------------
# 3. cgroup hybrid-mode fix for crun
# ---------------------------------------------------------------------------
# On a cgroup v1 "hybrid" host, crun refuses to run if any controller is
# attached to the unified (v2) hierarchy. Move such controllers to their own
# v1 hierarchy. Only done when needed; a pure v1 or pure v2 host is untouched.
cgroup_note="not needed"
unified=/sys/fs/cgroup/unified
if [[ -f "$unified/cgroup.controllers" ]] && mountpoint -q "$unified" 2>/dev/null; then
    controllers=$(tr -s ' \n' ' ' <"$unified/cgroup.controllers" | sed 's/^ *//;s/ *$//')
    if [[ -n "$controllers" ]]; then
        moved=()
        for ctrl in $controllers; do
            target="/sys/fs/cgroup/$ctrl"
            if mountpoint -q "$target" 2>/dev/null; then
                continue
            fi
            mkdir -p "$target"
            if mount -t cgroup -o "$ctrl" cgroup "$target" >>"$LOG" 2>&1; then
                moved+=("$ctrl")
            else
                problems+=("could not move cgroup controller '$ctrl' from cgroup2 to v1 (crun will refuse to run; see $LOG)")
            fi
        done
        remaining=$(tr -s ' \n' ' ' <"$unified/cgroup.controllers" | sed 's/^ *//;s/ *$//')
        if [[ -n "$remaining" ]]; then
            problems+=("cgroup2 at $unified still has controllers: '$remaining' (crun hybrid mode will fail)")
        fi
        cgroup_note="hybrid: moved to v1: ${moved[*]:-none}"
    else
        cgroup_note="hybrid, unified hierarchy has no controllers (ok)"
    fi
elif [[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" == "cgroup2fs" ]]; then
    cgroup_note="pure cgroup v2 (ok)"
fi

# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
say "runc:    $(runc --version 2>/dev/null | head -n1 || echo missing)"
say "crun:    $(crun --version 2>/dev/null | head -n1 || echo missing)"
say "capnp:   $(capnp --version 2>/dev/null || echo missing)"
say "cargo:   $cargo_ver ($cargo_path)"
say "go:      $go_ver ($go_path)"
say "fuzz:    $fuzz_note"
say "cgroups: $cgroup_note"

if ((${#problems[@]} > 0)); then
    for p in "${problems[@]}"; do
        printf '[install-deps] ERROR: %s\n' "$p" >&2
    done
    exit 1
fi
say "ok"
