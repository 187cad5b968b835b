#!/usr/bin/env bash
# Lints: clippy with warnings denied, formatting, and docs without warnings.
set -euo pipefail
cargo clippy --workspace --all-targets -- -D warnings
cargo fmt --all -- --check
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
