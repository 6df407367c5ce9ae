#!/usr/bin/env bash
# Set up this checkout on a fresh Debian machine: system tools (when root) and a virtualenv in .venv.
#   scripts/setup.sh train   the tuning job only
#   scripts/setup.sh dev     everything the default test run needs (job, service, Prometheus, Pushgateway)
#   scripts/setup.sh e2e     dev + podman, debootstrap, the CNI dnsname plugin and podman-compose (pinned in
#                            requirements-e2e.txt) for the container end-to-end test (pytest -m e2e)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"

apt_packages=()
case "$profile" in
  train) extras="train" ;;
  dev) extras="train,serve,dev"; apt_packages=(prometheus prometheus-pushgateway openssl) ;;
  e2e) extras="train,serve,dev"
       # The dnsname CNI plugin: compose services reach each other by name (podman here uses CNI).
       # podman-compose comes from PyPI (requirements-e2e.txt): Debian's 1.0.3 ignores depends_on conditions.
       apt_packages=(prometheus prometheus-pushgateway openssl podman runc buildah debootstrap
                     golang-github-containernetworking-plugin-dnsname) ;;
  *) echo "usage: $0 {train|dev|e2e}" >&2; exit 2 ;;
esac

# kubectl renders the kustomization in the tests; Debian's kubernetes-client provides it where the
# machine has no newer kubectl of its own.
command -v kubectl >/dev/null 2>&1 || [ "$profile" = train ] || apt_packages+=(kubernetes-client)

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${missing[*]} (run as root or apt-get install them)" >&2; exit 1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]"
if [ "$profile" = e2e ]; then
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -r requirements-e2e.txt
fi
