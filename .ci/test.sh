#!/usr/bin/env bash
# The README's test command, unchanged.
set -euo pipefail
cargo test --workspace
