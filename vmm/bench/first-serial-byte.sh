#!/bin/sh
# Wall time from exec of hull-vmm to the tiny guest's first serial byte, and hull-vmm's max
# RSS, with 64 MiB of guest memory. Prints numbers only (no pass/fail).
# Usage: vmm/bench/first-serial-byte.sh [RUNS [HULL-VMM ARGS...]]   (e.g. 20 --no-rng)
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-vmm}"
cargo build --release -q -p hull-vmm --bin hull-vmm --example first_serial_byte
RUNS="${1:-20}"
[ $# -gt 0 ] && shift
"$CARGO_TARGET_DIR/release/examples/first_serial_byte" "$CARGO_TARGET_DIR/release/hull-vmm" "$RUNS" "$@"
