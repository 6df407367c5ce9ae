#!/usr/bin/env bash
# Set up this checkout: system tools (on Debian/Ubuntu, when root) and a virtualenv in .venv.
#   scripts/setup.sh train   the tuning job only (no system tools)
#   scripts/setup.sh dev     everything the default test run needs (job, service, Prometheus, Pushgateway,
#                            Chromium for the page test, KServe's SDK in .venv-kserve, ...)
#   scripts/setup.sh e2e     dev + podman, debootstrap, the CNI dnsname plugin and podman-compose (pinned in
#                            requirements-e2e.txt) for the container end-to-end test (pytest -m e2e), and
#                            catatonit for the played manifests (pytest -m k8s)
# The interpreter: $PYTHON if set, else the first of python3.13, python3.12, python3.11, python3 whose
# version the pinned wheels support (SUPPORTED below; pyproject.toml's requires-python says the same).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
SUPPORTED="3.11 3.12 3.13"

apt_packages=()
case "$profile" in
  train) extras="train" ;;
  dev) extras="train,serve,dev"; apt_packages=(prometheus prometheus-pushgateway openssl chromium chromium-driver curl) ;;
  e2e) extras="train,serve,dev"
       # The dnsname CNI plugin: compose services reach each other by name (podman here uses CNI).
       # podman-compose comes from PyPI (requirements-e2e.txt): Debian's 1.0.3 ignores depends_on conditions.
       # catatonit: podman builds its pause image from it, which `podman kube play` needs (pytest -m k8s).
       apt_packages=(prometheus prometheus-pushgateway openssl chromium chromium-driver curl podman runc buildah
                     debootstrap golang-github-containernetworking-plugin-dnsname catatonit) ;;
  *) echo "usage: $0 {train|dev|e2e}" >&2; exit 2 ;;
esac

# kubectl renders the kustomization in the tests; Debian's kubernetes-client provides it where the
# machine has no newer kubectl of its own.
command -v kubectl >/dev/null 2>&1 || [ "$profile" = train ] || apt_packages+=(kubernetes-client)

if [ ${#apt_packages[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    # Not Debian/Ubuntu: the tests that need these fail (never skip) and name the missing tool.
    echo "warning: no apt-get; install these yourself for the '$profile' tests: ${apt_packages[*]}" >&2
  else
    missing=()
    for pkg in "${apt_packages[@]}"; do
      dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      if [ "$(id -u)" -ne 0 ]; then
        echo "missing system packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        exit 1
      fi
      apt-get update -q
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
  fi
fi

supported() {  # prints the interpreter's X.Y and succeeds when it is one of SUPPORTED
  local version
  version="$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || return 1
  echo "$version"
  [[ " $SUPPORTED " == *" $version "* ]]
}

if [ -e .venv ] || [ -L .venv ]; then
  if ! version="$(supported .venv/bin/python)"; then
    echo "error: .venv exists but is not a virtualenv of Python ${SUPPORTED// /, } (found: ${version:-none})." >&2
    echo "Remove it (rm -rf .venv) and run $0 $profile again." >&2
    exit 1
  fi
else
  python=""
  for candidate in ${PYTHON:-python3.13 python3.12 python3.11 python3}; do
    if command -v "$candidate" >/dev/null 2>&1 && supported "$candidate" >/dev/null; then
      python="$candidate"; break
    fi
  done
  if [ -z "$python" ]; then
    echo "error: no supported Python found; TensorFlow 2.21 and the pinned packages need Python" \
         "${SUPPORTED// /, } (tried: ${PYTHON:-python3.13 python3.12 python3.11 python3})." >&2
    echo "Install one (Debian 12: apt-get install python3 python3-venv; elsewhere: pyenv install 3.12," \
         "uv python install 3.12, or python.org) and run again, or point PYTHON at it." >&2
    exit 1
  fi
  echo "creating .venv with $python ($(supported "$python"))"
  "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]"
if [ "$profile" = e2e ]; then
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -r requirements-e2e.txt
fi
# KServe's Python SDK (its REST and gRPC clients, for tests/deploy/test_kserve.py) in its own virtualenv:
# kserve 0.21.0 pins protobuf below 7, the project's tree has protobuf 7 (requirements-kserve.txt).
if [ "$profile" != train ]; then
  [ -x .venv-kserve/bin/python ] || .venv/bin/python -m venv .venv-kserve
  .venv-kserve/bin/pip install -q --disable-pip-version-check -r requirements-kserve.txt
fi
