#!/usr/bin/env bash
# loky without its default features, so in rkyv's 32-bit format (feature
# `pointer_width_64` off): the numeric-Vec fast path reads the narrower
# roots, and a `usize` that rkyv would cut is refused, not sent cut.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test -p loky --no-default-features --lib numeric_vec
cargo test -p loky --no-default-features --test api sizes_past_32_bits
cargo clippy -p loky --no-default-features --all-targets -- -D warnings
