#!/usr/bin/env bash
# Release binaries, for the benchmarks (CI and the demo use debug builds).
#
# Every binary of the workspace, then the sidecar linked statically (glibc included,
# `-C target-feature=+crt-static`, a static-pie executable): it maps only the libc code it
# uses instead of all of libc.so, libm.so and ld.so. On these hosts the page cache hands a
# process whole large folios, so a mapped shared library is resident nearly in full: linked
# statically the sidecar's RSS at 1,000 req/s fell from 10.1 to 8.4 MiB
# (`benches/sidecar_vs_envoy.rs`). The sidecar resolves no names (every address it takes is
# an IP), so static glibc's NSS limits do not apply.
#
# `cargo rustc` passes the flag to the sidecar's final link only; a workspace-wide RUSTFLAGS
# would reach proc-macro crates, which cannot be built with crt-static.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --exclude switchyard-dataplane-sidecar
cargo rustc --release -p switchyard-dataplane-sidecar --bin switchyard-sidecar \
    -- -C target-feature=+crt-static
