#!/usr/bin/env bash
# Build ringmon and install it with its man pages and shell completions
# (generated from the clap definitions by ringmon-gen-docs), as root:
#
#   bash tools/install.sh              # under /usr/local
#   PREFIX=/usr bash tools/install.sh
#   DESTDIR=/tmp/pkg bash tools/install.sh   # staged, for packaging
#
# Installs: $PREFIX/bin/ringmon, $PREFIX/share/man/man1/ringmon*.1,
# bash, zsh and fish completions under $PREFIX/share.
set -euo pipefail

PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"

cargo build --release --bin ringmon --bin ringmon-gen-docs
docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
"$TARGET/release/ringmon-gen-docs" "$docs" >/dev/null

root="$DESTDIR$PREFIX"
install -Dm755 "$TARGET/release/ringmon" "$root/bin/ringmon"
install -d "$root/share/man/man1"
install -m644 "$docs"/man/*.1 "$root/share/man/man1/"
install -Dm644 "$docs/completions/ringmon.bash" "$root/share/bash-completion/completions/ringmon"
install -Dm644 "$docs/completions/_ringmon" "$root/share/zsh/site-functions/_ringmon"
install -Dm644 "$docs/completions/ringmon.fish" "$root/share/fish/vendor_completions.d/ringmon.fish"
echo "installed ringmon, $(ls "$docs"/man | wc -l) man pages and bash/zsh/fish completions under $root"
