#!/usr/bin/env bash
# Makes a Debian base image from Debian's packages with debootstrap, for machines where
# no image registry is reachable, and imports it into the local Docker engine.
#
#   deploy/docker/debian-base.sh IMAGE[:TAG] [PACKAGE,...]
#
# The mirror comes from this machine's own apt sources (override with DEBIAN_MIRROR);
# the suite is bookworm (override with DEBIAN_SUITE). Needs root and debootstrap
# (installed with apt-get when missing).
set -Eeuo pipefail

image="${1:?usage: debian-base.sh IMAGE[:TAG] [PACKAGE,...]}"
packages="${2:-}"
suite="${DEBIAN_SUITE:-bookworm}"

step() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "debian-base.sh: debootstrap needs root" >&2
    exit 1
fi

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # deb822 sources first, then the one-line format.
    mirror="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
if [ -z "$mirror" ]; then
    mirror="$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
if [ -z "$mirror" ]; then
    echo "debian-base.sh: no Debian mirror in /etc/apt sources; set DEBIAN_MIRROR" >&2
    exit 1
fi

if ! command -v debootstrap >/dev/null; then
    step "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

step "debootstrap $suite from $mirror${packages:+ with $packages} (about a minute)"
include=()
if [ -n "$packages" ]; then
    include=(--include="$packages")
fi
debootstrap --variant=minbase "${include[@]}" "$suite" "$rootfs" "$mirror" >&2

step "trimming the root file system"
# Debian's postgresql package creates a default cluster; images make their own.
rm -rf "$rootfs"/var/lib/postgresql/*/main "$rootfs"/etc/postgresql/*/main
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

step "importing as $image"
tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$image" >/dev/null
step "done: $image"
