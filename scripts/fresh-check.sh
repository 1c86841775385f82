#!/usr/bin/env bash
# Runs the README's test command, `bash scripts/test.sh`, on a fresh Debian 12 (a debootstrap
# minbase chroot) for the committed HEAD of a checkout. CI runs on a machine that keeps whatever
# was ever installed by hand, so a missing install step in scripts/setup.sh only shows up here.
#
# Usage: bash scripts/fresh-check.sh [REPO] [ROOT]
#   REPO  checkout to test (default: this one). Its HEAD commit is cloned: commit first.
#   ROOT  chroot folder (default /work/fresh-root), made anew from a pristine copy, ROOT.base, which
#         `debootstrap --variant=minbase bookworm` makes on the first run and later runs reuse.
# Environment: MIRROR (default http://deb.debian.org/debian), JOBS (default 2),
#   KBITD_FUZZ_SECONDS (default 10), LOG (default ROOT-test.log), NICE (default 10).
# Needs: root (chroot, mounts) and debootstrap (`apt-get install debootstrap`); the network to reach
# the Debian mirror and PyPI.
#
# Inside the chroot nothing is installed by hand except what the clone itself needs (git,
# ca-certificates); setup.sh installs the rest. Not project steps, but plumbing of a chroot: the
# host's resolv.conf and its locally added CA certificates (a TLS-intercepting egress proxy needs
# them), the /etc/hosts every installed Debian has (debootstrap writes none, and gRPC's resolver
# then asks DNS for "localhost"), and a policy-rc.d that keeps package scripts from starting
# services (prometheus) in it.
# The test command runs with a clean environment (no host PATH or Python) at nice NICE.
set -euo pipefail
REPO=$(cd "${1:-$(dirname "$0")/..}" && pwd)
ROOT=${2:-/work/fresh-root}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
LOG=${LOG:-$ROOT-test.log}
[[ $(id -u) -eq 0 ]] || { echo "fresh-check: needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "fresh-check: apt-get install debootstrap" >&2; exit 2; }

if [[ ! -x $ROOT.base/bin/bash ]]; then
  rm -rf "$ROOT.base"
  debootstrap --variant=minbase bookworm "$ROOT.base" "$MIRROR"
fi

mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" || true; done
}
trap cleanup EXIT

# Never remove a folder that still has something mounted in it (a host /dev, say).
if grep -q " $ROOT/" /proc/mounts; then
  echo "fresh-check: $ROOT still has mounts; unmount them first" >&2
  exit 2
fi
rm -rf "$ROOT"
cp -a "$ROOT.base" "$ROOT"
for m in proc sys dev dev/pts; do
  case $m in
    proc) mount -t proc proc "$ROOT/proc" ;;
    sys) mount -t sysfs sys "$ROOT/sys" ;;
    dev) mount --bind /dev "$ROOT/dev" ;;
    dev/pts) mount -t devpts devpts "$ROOT/dev/pts" ;;
  esac
  mounts+=("$ROOT/$m")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
[[ -e $ROOT/etc/hosts ]] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
  > "$ROOT/etc/hosts"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
mkdir -p "$ROOT/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true

# The committed HEAD, as a bundle (works for worktrees and needs no mount of the host's .git).
git -C "$REPO" bundle create "$ROOT/tmp/repo.bundle" HEAD
revision=$(git -C "$REPO" rev-parse --short HEAD)

in_root() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
start=$(date +%s)
{
  echo "fresh-check: $REPO at $revision in $ROOT, $(date -u)"
  in_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends git ca-certificates >/dev/null && update-ca-certificates >/dev/null'
  in_root git -c advice.detachedHead=false clone -q /tmp/repo.bundle /src
  set +e
  in_root sh -c "cd /src && JOBS=${JOBS:-2} KBITD_FUZZ_SECONDS=${KBITD_FUZZ_SECONDS:-10} \
    nice -n ${NICE:-10} bash scripts/test.sh"
  rc=$?
  set -e
  echo "fresh-check: bash scripts/test.sh exited $rc after $(( $(date +%s) - start )) s"
  exit $rc
} 2>&1 | tee "$LOG"
