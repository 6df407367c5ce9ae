#!/usr/bin/env bash
# End to end with real containers (podman) on this machine; what compose.yaml does, step by step:
#   1. the local base image (scripts/make-base-images.sh), both images built from it (layer cache kept)
#   2. mnist-tune, smoke preset, MNIST mounted read-only, writes the model repository into a volume and
#      pushes its progress to a real Pushgateway
#   3. mnist-serve on that volume (read-only, read-only root filesystem), health-checked with the same
#      grpc.health.v1 command as compose.yaml
#   4. a Predict from the host (serving.client on 200 MNIST test images), a real Prometheus scraping the
#      service and the Pushgateway with the alert rules loaded
#   5. prints image sizes and timings; the last line is "E2E PASSED ..." on success.
# Usage: scripts/e2e.sh   (as root; env: MNIST_DATA_DIR, E2E_KEEP=1 keeps containers and volume)
# Needs: podman runc debootstrap prometheus prometheus-pushgateway (scripts/setup.sh e2e) and .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/scripts/containers.conf}"
export TF_CPP_MIN_LOG_LEVEL=2
export PYTHONPATH="$repo"  # host-side client and load generator import serving/ and digits/ from here
python="$repo/.venv/bin/python"
mnist="$(realpath "${MNIST_DATA_DIR:-$repo/../shared/datasets/mnist}")"
prefix="mnist-e2e"
tag="e2e"
work="$(mktemp -d /tmp/mnist-e2e.XXXXXX)"
t0=$(date +%s)

log() { printf '%s [e2e] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() { log "FAILED: $*"; exit 1; }
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    log "serve container log (tail):"; podman logs --tail 30 "$prefix-serve" 2>&1 | sed 's/^/    /' || true
  fi
  if [ "${E2E_KEEP:-0}" != 1 ]; then
    podman rm -f -t 5 "$prefix-serve" "$prefix-tune" >/dev/null 2>&1 || true
    podman volume rm -f "$prefix-workspace" >/dev/null 2>&1 || true
    rm -rf "$work"
  else
    log "kept: containers $prefix-*, volume $prefix-workspace, $work"
  fi
  exit "$rc"
}
trap cleanup EXIT

for tool in podman prometheus prometheus-pushgateway; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/setup.sh e2e)"
done
[ -x "$python" ] || fail "no .venv (scripts/setup.sh e2e)"
[ -f "$mnist/t10k-images-idx3-ubyte.gz" ] || fail "MNIST files not found in $mnist (set MNIST_DATA_DIR)"

log "1/5 base image and builds"
scripts/make-base-images.sh
build=(podman build --pull=never --layers)
# A TLS-intercepting proxy on the build machine: give pip inside the build the host's CA bundle.
[ -d /etc/ssl/certs ] && build+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
previous=$(podman image inspect -f '{{.Id}}' "mnist-serve:$tag" "mnist-tune:$tag" 2>/dev/null || true)
tb=$(date +%s)
"${build[@]}" -f Dockerfile.serve -t "mnist-serve:$tag" . >"$work/build-serve.log" 2>&1 \
  || { tail -30 "$work/build-serve.log"; fail "building mnist-serve"; }
"${build[@]}" -f Dockerfile.train --build-arg TF_PACKAGE=tensorflow==2.21.0 -t "mnist-tune:$tag" . \
  >"$work/build-tune.log" 2>&1 || { tail -30 "$work/build-tune.log"; fail "building mnist-tune"; }
build_seconds=$(( $(date +%s) - tb ))
# The images these builds replaced are untagged now; drop them (2 GB each), but not the build cache.
current=$(podman image inspect -f '{{.Id}}' "mnist-serve:$tag" "mnist-tune:$tag")
for id in $previous; do
  grep -q "$id" <<<"$current" || podman rmi "$id" >/dev/null 2>&1 || true
done
log "images built in ${build_seconds}s"
for image in mnist-serve mnist-tune; do
  user=$(podman image inspect -f '{{.Config.User}}' "$image:$tag")
  [ "$user" = "10001:10001" ] || fail "$image runs as '$user', not 10001:10001"
done
# The serving image: no keras-tuner, no compilers.
podman run --rm --network=none --entrypoint python "mnist-serve:$tag" -c '
import importlib.util, shutil, sys
found = [m for m in ("keras_tuner", "matplotlib") if importlib.util.find_spec(m)]
found += [c for c in ("gcc", "cc", "g++", "c++", "clang") if shutil.which(c)]
sys.exit(f"serve image contains {found}" if found else 0)' || fail "serve image is not slim"

log "2/5 tune (smoke preset) into volume $prefix-workspace"
podman rm -f "$prefix-serve" "$prefix-tune" >/dev/null 2>&1 || true
podman volume rm -f "$prefix-workspace" >/dev/null 2>&1 || true
podman volume create "$prefix-workspace" >/dev/null
pgw_port=$(free_port)
# --persistence.file= : Debian's default file would bring back metrics pushed by earlier runs.
prometheus-pushgateway --web.listen-address="127.0.0.1:$pgw_port" --persistence.file= >"$work/pushgateway.log" 2>&1 &
pids+=($!)
tt=$(date +%s)
# Host network only so the job can reach the Pushgateway on the host's loopback.
podman run --name "$prefix-tune" --network=host \
  -v "$prefix-workspace:/workspace" -v "$mnist:/data/mnist:ro" \
  -e TUNE_PRESET=smoke -e MNIST_DATA_DIR=/data/mnist -e TUNE_PUSHGATEWAY="127.0.0.1:$pgw_port" \
  "mnist-tune:$tag" >"$work/tune.log" 2>&1 || { tail -40 "$work/tune.log"; fail "tune container failed"; }
tune_seconds=$(( $(date +%s) - tt ))
versions=$(podman run --rm -v "$prefix-workspace:/workspace:ro" --entrypoint ls "mnist-serve:$tag" \
  /workspace/run/models/mnist)
[ -n "$versions" ] || fail "no model version in the volume"
log "tune done in ${tune_seconds}s; model versions in the volume: $(echo $versions)"

log "3/5 serve"
grpc_port=$(free_port)
metrics_port=$(free_port)
podman run -d --name "$prefix-serve" --read-only --tmpfs /tmp \
  -v "$prefix-workspace:/workspace:ro" \
  -p "127.0.0.1:$grpc_port:8500" -p "127.0.0.1:$metrics_port:8000" \
  "mnist-serve:$tag" >/dev/null
# The health check from compose.yaml, run inside the container.
health_cmd=$("$python" -c 'import sys, yaml
test = yaml.safe_load(open("compose.yaml"))["services"]["serve"]["healthcheck"]["test"]
assert test[0] == "CMD-SHELL", test
print(test[1])')
[ -n "$health_cmd" ] || fail "no health-check command found in compose.yaml"
ts=$(date +%s)
until podman exec "$prefix-serve" sh -c "$health_cmd" 2>/dev/null; do
  [ "$(podman inspect -f '{{.State.Running}}' "$prefix-serve")" = true ] || fail "serve container exited"
  [ $(( $(date +%s) - ts )) -lt 180 ] || fail "serve not SERVING after 180 s"
  sleep 2
done
log "serve is SERVING after $(( $(date +%s) - ts ))s"
# What the Kubernetes startup/liveness probes ask (k8s/serve-deployment.yaml).
podman exec "$prefix-serve" python -c 'import sys, grpc
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g
r = g.HealthStub(grpc.insecure_channel("localhost:8500")).Check(h.HealthCheckRequest(service="liveness"), timeout=3)
sys.exit(r.status != h.HealthCheckResponse.SERVING)' || fail "health service liveness is not SERVING"

log "4/5 Predict from the host, Prometheus scrape"
"$python" -m serving.client --target "127.0.0.1:$grpc_port" --idx "$mnist/t10k-images-idx3-ubyte.gz" \
  --labels "$mnist/t10k-labels-idx1-ubyte.gz" --count 200 >"$work/predict.log" || { cat "$work/predict.log"; fail "Predict from the host"; }
tail -2 "$work/predict.log"
prom_port=$(free_port)
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$repo/monitoring/rules/digits-alerts.yml"]
scrape_configs:
  - job_name: digits-serve
    static_configs: [{targets: ["127.0.0.1:$metrics_port"]}]
  - job_name: pushgateway
    honor_labels: true
    static_configs: [{targets: ["127.0.0.1:$pgw_port"]}]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
"$python" scripts/loadgen.py --target "127.0.0.1:$grpc_port" --duration 15 --concurrency 4 --rate 100 \
  >"$work/loadgen.log" 2>&1 || { cat "$work/loadgen.log"; fail "load against the container"; }
tail -1 "$work/loadgen.log"
PROM="http://127.0.0.1:$prom_port" "$python" - <<'EOF' || fail "Prometheus did not see the service"
import json, os, sys, time, urllib.parse, urllib.request
base = os.environ["PROM"]
checks = {
    "model loaded": 'max(digits_model_loaded_version{job="digits-serve"}) >= 1',
    "requests scraped": 'sum(digits_requests_total{job="digits-serve", code="OK"}) > 0',
    "tune success pushed": 'max(digits_tune_last_success_timestamp_seconds{job="mnist_tune"}) > 0',
}
deadline = time.monotonic() + 60
while checks and time.monotonic() < deadline:
    for name, expr in list(checks.items()):
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
        except OSError:
            result = []
        if result:
            print(f"  prometheus: {name}: {expr} -> {result[0]['value'][1]}")
            del checks[name]
    time.sleep(1)
sys.exit(f"  prometheus: no data for {sorted(checks)}" if checks else 0)
EOF

log "5/5 figures"
for image in mnist-serve mnist-tune; do
  size=$(podman image inspect -f '{{.Size}}' "$image:$tag")
  printf '  image %-12s %6d MB\n' "$image" $(( size / 1000000 ))
done
base_size=$(podman image inspect -f '{{.Size}}' docker.io/library/python:3.11-slim-bookworm)
printf '  base  %-12s %6d MB\n' "python:3.11" $(( base_size / 1000000 ))
total=$(( $(date +%s) - t0 ))
log "E2E PASSED in ${total}s (builds ${build_seconds}s, tune ${tune_seconds}s)"
