#!/usr/bin/env bash
# Install everything crossmig needs on a fresh Debian bookworm machine.
# Idempotent and quick when everything is present. Adds ONLY bookworm-backports
# to the host's apt sources (never trixie/sid/testing).
set -euo pipefail

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

BPO=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > "$BPO" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fresh_source=1
fi

qemu_ok() {
  command -v qemu-system-x86_64 >/dev/null &&
  qemu-system-x86_64 --version | grep -qE 'version (1[0-9])\.'
}

for p in libclang-dev binutils pkg-config; do have "$p" || need_pkgs+=("$p"); done

if ! qemu_ok || [ "${#need_pkgs[@]}" -gt 0 ] || [ -n "${fresh_source:-}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! qemu_ok; then
    apt-get install -y -qq -t bookworm-backports --no-install-recommends qemu-system-x86
  fi
  if [ "${#need_pkgs[@]}" -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
  fi
fi

qemu-system-x86_64 --version | head -1
# userfaultfd for postcopy (root may use it regardless; keep the sysctl permissive for tests)
if [ -w /proc/sys/vm/unprivileged_userfaultfd ]; then echo 1 > /proc/sys/vm/unprivileged_userfaultfd || true; fi

# QEMU's own Python QMP library (`qemu.qmp`, from PyPI) for the QMP transcript
# test (harness/tests/qmp_transcript.rs), in a venv under target/.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/target/pyvenv"
if ! "$VENV/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends python3-venv
  fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q qemu.qmp
fi

# The fuzz targets (fuzz/, ci/fuzz-smoke.sh): libFuzzer needs nightly Rust
# and cargo-fuzz. Installed only with CROSSMIG_FUZZ_SMOKE=1 and where rustup
# manages the toolchains.
if [ "${CROSSMIG_FUZZ_SMOKE:-0}" = 1 ] && command -v rustup >/dev/null; then
  cargo +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
  cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
fi
