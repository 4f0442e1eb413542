#!/usr/bin/env bash
# Fetch QEMU's scripts/analyze-migration.py (7.2, 10.0, and 10.2 for 11.1
# streams) for the `crossmig analyze` tests. The script is only in QEMU's
# source tarball, not in the binary packages: the Debian orig tarball is
# downloaded with a private apt configuration (deb-src lines; the host's
# sources stay untouched) and only scripts/analyze-migration.py is kept, in
# $CROSSMIG_QEMU_SRC/<version>/ (default /var/cache/crossmig/qemu-src).
# Usage: ci/fetch-analyze-migration.sh   (idempotent; prints where each is)
set -euo pipefail
CACHE=${CROSSMIG_QEMU_SRC:-/var/cache/crossmig/qemu-src}
mkdir -p "$CACHE"
# version  Debian source version  top directory in the orig tarball
VERSIONS=(
  "7.2 1:7.2+dfsg-7+deb12u18 qemu-7.2.0"
  "10.0 1:10.0.2+ds-2+deb13u1~bpo12+1 qemu-10.0.2"
  "10.2 1:10.2.2+ds-1 qemu-10.2.2"
)
APTDIR="$CACHE/.apt"
ready=0
for entry in "${VERSIONS[@]}"; do
  read -r ver debver top <<<"$entry"
  out="$CACHE/$ver/analyze-migration.py"
  if [ -s "$out" ]; then
    echo "$out"
    continue
  fi
  if [ "$ready" = 0 ]; then
    mkdir -p "$APTDIR/lists/partial"
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-backports trixie trixie-backports sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$APTDIR/src.sources"
    APTO=(-o "Dir::Etc::SourceList=$APTDIR/src.sources" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$APTDIR/lists")
    apt-get "${APTO[@]}" -qq update
    ready=1
  fi
  work=$(mktemp -d)
  # The debian.tar of some versions answers 404; the orig tarball, the only
  # file needed, still downloads, so apt's exit status is not decisive.
  (cd "$work" && apt-get "${APTO[@]}" -qq source --download-only "qemu=$debver" >/dev/null 2>&1 || true)
  orig=$(ls "$work"/qemu_*.orig.tar.* 2>/dev/null | head -n1 || true)
  if [ -z "$orig" ]; then
    echo "fetch-analyze-migration: could not download the QEMU $ver source tarball (qemu=$debver)" >&2
    rm -rf "$work"
    exit 1
  fi
  mkdir -p "$CACHE/$ver"
  tar -xOf "$orig" "$top/scripts/analyze-migration.py" >"$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$work"
  echo "$out"
done
