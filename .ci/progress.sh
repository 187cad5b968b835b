#!/usr/bin/env bash
# The `progress` feature (indicatif progress bars on maps): its tests and
# doc examples, clippy and rustdoc with the feature on, and the 10-million-
# item example (a few seconds in release).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test -p loky --features progress --test progress
cargo test -p loky --features progress --doc progress
cargo clippy -p loky --features progress --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc -p loky --no-deps --features progress
cargo run --release --features progress --example chunked_map
