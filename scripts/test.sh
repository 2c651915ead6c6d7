#!/usr/bin/env bash
# The whole test suite: installs what is missing (scripts/setup.sh), checks formatting and
# lints, then runs every test of the workspace — unit, protocol, real-Envoy conformance and
# proxyless gRPC. Tests that need root (network namespaces, eBPF) run when root and say so
# loudly when not.
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

step() { printf '\n== %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# The suites start the workspace's binaries as real processes (switchyard-sidecar, yardctl,
# switchyard-echo); `cargo test` builds only the binaries of packages with integration tests.
step "cargo build --workspace --bins"
cargo build --workspace --bins --quiet

step "cargo test --workspace"
cargo test --workspace "$@"

step "all tests passed"
