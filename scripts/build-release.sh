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
#
# The sidecar is then built with profile-guided optimisation (LLVM PGO through rustc's
# `-Cprofile-generate` / `-Cprofile-use`), as Chromium and rustc itself are:
#   1. an instrumented build (its own target directory: RUSTFLAGS reach every crate, so
#      hyper, h2, tokio and rustls are profiled too, not just the sidecar's own code);
#   2. a training run: the benchmark's `sidecar` setup, 5 s per workload (HTTP/1.1 and gRPC,
#      1,000 req/s and max rate), which needs root like the benchmark;
#   3. the optimised build from the merged profile, copied to target/release.
# Measured with the benchmark (3 interleaved rounds against the same source without PGO): CPU
# per request at 1,000 req/s -20 to -30 %, p50 -15 to -25 %, RSS -0.5 MiB (hot code packed
# together); CPU per request at max rate -10 to -15 %. The profile comes from a timed run, so
# a PGO build is not byte-reproducible; SWITCHYARD_PGO=0 skips PGO (so does not being root).
# Only the two proxies' profiles are merged: the profile covers the proxy, not `init`.
# It needs rustup's llvm-tools (llvm-profdata matching rustc's LLVM), added here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cargo build --release --workspace --bins --exclude switchyard-dataplane-sidecar

# `cargo rustc` building the sidecar statically, with $RUSTFLAGS for every crate.
sidecar() {
    cargo rustc --release -p switchyard-dataplane-sidecar --bin switchyard-sidecar \
        -- -C target-feature=+crt-static
}

# Without PGO: drop a PGO copy first, so cargo links its own artefact again even when it is
# up to date.
plain_sidecar() {
    rm -f "$root/target/release/switchyard-sidecar"
    sidecar
}

if [[ "${SWITCHYARD_PGO:-1}" == 0 ]]; then
    echo "build-release: SWITCHYARD_PGO=0: sidecar without profile-guided optimisation" >&2
    plain_sidecar
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "build-release: not root, so no PGO training run (it runs pods in network namespaces); sidecar without profile-guided optimisation" >&2
    plain_sidecar
    exit 0
fi

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x $profdata ]]; then
    echo "build-release: adding rustup's llvm-tools (llvm-profdata)" >&2
    rustup component add llvm-tools
fi

pgo=$root/target/pgo
rm -rf "$pgo"
mkdir -p "$pgo/raw"
echo "build-release: PGO 1/3: instrumented sidecar (target/pgo-gen)" >&2
# CARGO_ENCODED_RUSTFLAGS: a path with spaces stays one flag (it replaces any RUSTFLAGS).
CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$pgo/raw" CARGO_TARGET_DIR=$root/target/pgo-gen sidecar
# Build scripts were instrumented too and left profiles of their own.
rm -f "$pgo"/raw/*

echo "build-release: PGO 2/3: training run (the benchmark's sidecar setup, 5 s per workload)" >&2
LLVM_PROFILE_FILE="$pgo/raw/%p-%m.profraw" \
    SIDECAR_BENCH_SIDECAR=$root/target/pgo-gen/release/switchyard-sidecar \
    cargo bench -p switchyard-tests --bench sidecar_vs_envoy -- \
    --duration 5s --warmup 1s --setups sidecar --out "$pgo/train" 2>&1 | tee "$pgo/train.log"
# A profile is written only at a clean exit: both proxies must have left theirs (the
# capture's `init` runs always do, and a profile of those alone would mark the whole proxy
# path cold).
pids=$(grep -o 'proxy pids [0-9]* (client) and [0-9]*' "$pgo/train.log" | grep -o '[0-9]*' || true)
if [[ $(wc -w <<<"$pids") != 2 ]]; then
    echo "build-release: the training run did not report its proxies' pids" >&2
    exit 1
fi
shopt -s nullglob
profiles=()
for pid in $pids; do
    found=("$pgo/raw/$pid"-*.profraw)
    if (( ${#found[@]} == 0 )); then
        echo "build-release: proxy $pid left no profile (killed instead of exiting on SIGTERM?)" >&2
        exit 1
    fi
    profiles+=("${found[@]}")
done
"$profdata" merge -o "$pgo/merged.profdata" "${profiles[@]}"
# Named by its hash: cargo tracks RUSTFLAGS, not the profile's content, so a new profile
# must change the flags for every crate to be rebuilt with it.
profile="$pgo/sidecar-$(sha256sum "$pgo/merged.profdata" | cut -c1-16).profdata"
mv "$pgo/merged.profdata" "$profile"

echo "build-release: PGO 3/3: optimised sidecar (target/pgo-use -> target/release)" >&2
CARGO_ENCODED_RUSTFLAGS="-Cprofile-use=$profile" CARGO_TARGET_DIR=$root/target/pgo-use sidecar
# A new file, not a write through cargo's hard link to its own (non-PGO) artefact.
cp --remove-destination "$root/target/pgo-use/release/switchyard-sidecar" \
    "$root/target/release/switchyard-sidecar"
echo "build-release: done; target/release/switchyard-sidecar is the PGO build" >&2
