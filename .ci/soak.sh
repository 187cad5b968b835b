#!/usr/bin/env bash
# The short form of the soak test (the full run is 100 000 tasks:
# `cargo test --release --test soak -- --ignored --nocapture --test-threads=1`;
# one test at a time: the soak counts the process's descriptors and threads).
set -euo pipefail
LOKY_SOAK_TASKS=3000 LOKY_SOAK_SECS=120 cargo test --release --test soak -- --ignored --nocapture --test-threads=1
# Large values given away (shared-memory allocator) while workers are killed.
LOKY_SOAK_SECS=4 cargo test --release --test zero_copy -- --ignored --nocapture --test-threads=1
