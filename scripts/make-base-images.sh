#!/usr/bin/env bash
# Build the local stand-in for the Dockerfiles' default base image (no registry pulls needed).
#
# Debian bookworm minbase with python3 (3.11) + venv, imported into podman and tagged under the name
# Dockerfile.serve and Dockerfile.train expect by default (docker.io/library/python:3.11-slim-bookworm),
# so the Dockerfiles stay conventional. Idempotent: does nothing if the tag exists (--force rebuilds).
#   scripts/make-base-images.sh [--force]
# Needs root (debootstrap), debootstrap and podman. ~30-60 s, ~190 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/scripts/containers.conf}"

BASE_TAG="${BASE_TAG:-docker.io/library/python:3.11-slim-bookworm}"
LOCAL_TAG="localhost/mnist-base:bookworm-py311"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
force=0
[ "${1:-}" = "--force" ] && force=1

if [ "$force" -eq 0 ] && podman image exists "$BASE_TAG"; then
  echo "base image $BASE_TAG exists (use --force to rebuild)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "debootstrap needs root" >&2
  exit 1
fi

rootfs="$(mktemp -d /var/tmp/mnist-base-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm -> $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# What python:3.11-slim also leaves out: package lists and caches (they only add size).
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb

tar -C "$rootfs" -c . | podman import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$LOCAL_TAG" >/dev/null
podman tag "$LOCAL_TAG" "$BASE_TAG"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "mnist-base|python" || true
