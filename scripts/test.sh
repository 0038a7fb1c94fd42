#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the golden legacy vectors, and the
# integration tests that start real rsync daemons and real deploy binaries on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
# Examples are built too: the rsync tests spawn the example background-transfer runner.
cargo test --workspace "$@"
