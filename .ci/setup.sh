#!/usr/bin/env bash
# Installs what the tests need on a fresh machine.
set -euo pipefail
if ! command -v cargo >/dev/null; then
    echo "cargo is required (install Rust with rustup)" >&2
    exit 1
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true
