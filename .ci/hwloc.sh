#!/usr/bin/env bash
# The `hwloc` feature: installs the system's hwloc 2.x (libhwloc-dev;
# hwlocality-sys asks pkg-config for hwloc's static link line, which names
# -ludev, hence libudev-dev), then runs the NUMA placement tests (synthetic
# topologies and this machine) and clippy with the feature on.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pkg-config --exists hwloc 2>/dev/null || ! pkg-config --exists libudev 2>/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq libhwloc-dev libudev-dev pkg-config
fi
echo "libhwloc $(pkg-config --modversion hwloc)"

cargo test -p loky --features hwloc --lib topology
cargo test -p loky --features hwloc --test hwloc --test pinning
cargo test -p loky --features hwloc --doc topology::hwloc
cargo clippy -p loky -p loky-tools --features loky/hwloc --all-targets -- -D warnings
