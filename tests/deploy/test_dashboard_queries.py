"""Every Grafana panel query returns data from a real Prometheus scraping the real service under load.

Also checks that Prometheus loads the alert rules and evaluates each without error, and that the tuning
panels read what the job's own ``ProgressPusher`` pushes to a real Pushgateway.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import REPO, free_port, wait_for
from tests.support.tools import require_tools

DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "digits.json"
RULES = REPO / "monitoring" / "rules" / "digits-alerts.yml"
# Grafana's template variables, as Grafana would expand them for "All" and a short time range.
TEMPLATE_VALUES = {"$__rate_interval": "15s", "$instance": ".*", "$protocol": ".*"}


@pytest.fixture(autouse=True)
def _tools():
    require_tools("prometheus", "prometheus-pushgateway")


def http_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def panel_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with template variables expanded) for every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in TEMPLATE_VALUES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unexpanded template variable in {panel['title']}: {expr}"
            queries.append((f"{panel['title']} / {target['refId']}", expr))
    return queries


def export_tiny_model(root: Path) -> None:
    """Publish an untrained Rescaling -> Flatten -> Dense(10) model as version 1 of ``mnist``."""
    import keras

    import modelrepo
    from jobs.export import export_model

    model = keras.Sequential(
        [
            keras.Input(shape=modelrepo.IMAGE_SHAPE),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    metadata = modelrepo.ModelMetadata(
        model_name="mnist", tuner="none", final_model="best_trial", hyperparameters={"units": 0}
    )
    export_model(model, root, metadata)


class Process:
    """A child process whose output goes to a file (read back for ports and for failure messages)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        # PYTHONPATH: scripts/loadgen.py imports the generated digits package from the checkout.
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(args, stdout=self._file, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The service on a tiny model, a Pushgateway with the job's metrics, Prometheus scraping both."""
    tmp = tmp_path_factory.mktemp("stack")
    export_tiny_model(tmp / "models")
    processes: list[Process] = []
    try:
        server = Process(
            [
                sys.executable,
                "-m",
                "serving.server",
                "--model-root",
                str(tmp / "models"),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                "0",
                "--http-port",
                "0",
                "--poll-interval-seconds",
                "0.5",
            ],
            tmp / "server.log",
        )
        processes.append(server)
        ports = wait_for(
            lambda: (
                re.search(
                    r"gRPC on \S+?:(\d+), HTTP on \S+?:(\d+) .*metrics on \S+?:(\d+)/metrics", server.output()
                )
                or (server.proc.poll() is not None and pytest.fail(f"server exited:\n{server.output()}"))
            ),
            90,
            "the server's listening log line",
        )
        grpc_port, http_port, metrics_port = (int(port) for port in ports.groups())
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            wait_for(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ),
                90,
                "health SERVING",
            )
            # What the Deployment's liveness probe asks (k8s/serve-deployment.yaml).
            liveness = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
            assert liveness.status == health_pb2.HealthCheckResponse.SERVING

        gateway_port = free_port()
        gateway = Process(
            [
                "prometheus-pushgateway",
                f"--web.listen-address=127.0.0.1:{gateway_port}",
                "--persistence.file=",  # Debian's default file would bring back metrics of earlier runs
            ],
            tmp / "pgw.log",
        )
        processes.append(gateway)
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/-/ready", timeout=2),
            30,
            "the Pushgateway",
        )
        from jobs.pushmetrics import ProgressPusher, Snapshot

        pusher = ProgressPusher(f"127.0.0.1:{gateway_port}")
        assert pusher.update(Snapshot(completed=3, failed=1, best=0.97)), "progress push failed"
        assert pusher.success(), "success push failed"

        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "digits-serve", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]},
                {
                    "job_name": "pushgateway",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
                },
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_port = free_port()
        prometheus = Process(
            [
                "prometheus",
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp / "prometheus.log",
        )
        processes.append(prometheus)
        base = f"http://127.0.0.1:{prom_port}"
        wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2), 60, "Prometheus ready")

        load = Process(
            [
                sys.executable,
                str(REPO / "scripts" / "loadgen.py"),
                "--target",
                f"127.0.0.1:{grpc_port}",
                "--duration",
                "90",
                "--concurrency",
                "8",
                "--invalid-every",
                "10",
                "--metadata-every",
                "7",
                "--http-target",
                f"127.0.0.1:{http_port}",
                "--http-every",
                "3",
            ],
            tmp / "loadgen.log",
        )
        processes.append(load)
        yield {"prometheus": base, "load": load, "server": server, "grpc_port": grpc_port}
    finally:
        for process in reversed(processes):
            process.stop()


def query(base: str, expr: str) -> list[dict]:
    reply = http_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def has_number(result: list[dict]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def test_every_panel_query_returns_data(stack: dict) -> None:
    queries = panel_queries()
    assert len(queries) >= 10
    base = stack["prometheus"]
    pending = dict(queries)

    def all_answered() -> bool:
        for name, expr in list(pending.items()):
            if has_number(query(base, expr)):
                del pending[name]
        return not pending

    try:
        wait_for(all_answered, 75, "every panel query to return data", interval=2)
    except AssertionError:
        pytest.fail(
            "panels without data:\n"
            + "\n".join(f"  {name}: {expr}" for name, expr in pending.items())
            + f"\nloadgen:\n{stack['load'].output()[-2000:]}"
        )
    # The numbers mean what the panels say: a model is loaded, traffic flows, errors are the malformed ones.
    assert float(query(base, 'max(digits_model_loaded_version{model="mnist"})')[0]["value"][1]) == 1
    codes = {s["metric"]["code"] for s in query(base, "sum by (code) (digits_requests_total)")}
    assert {"OK", "INVALID_ARGUMENT"} <= codes
    # Both protocols feed the same metric names, told apart by the protocol label.
    by_protocol = query(base, "sum by (protocol, code) (digits_requests_total)")
    assert {(s["metric"]["protocol"], s["metric"]["code"]) for s in by_protocol} >= {
        ("grpc", "OK"),
        ("grpc", "INVALID_ARGUMENT"),
        ("http", "OK"),
        ("http", "INVALID_ARGUMENT"),
    }
    accuracy = query(base, 'max(digits_tune_best_val_accuracy{job="mnist_tune"})')
    assert float(accuracy[0]["value"][1]) == pytest.approx(0.97)


def test_alert_rules_load_and_evaluate(stack: dict) -> None:
    base = stack["prometheus"]

    def evaluated() -> list[dict] | None:
        groups = http_json(f"{base}/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return (
            rules
            if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
            else None
        )

    rules = wait_for(evaluated, 30, "every rule to be evaluated")
    expected = {
        rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    assert {rule["name"] for rule in rules} == expected
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken
    # Healthy service with a loaded model: neither the "no model" nor the "down" alert may be pending.
    firing = {alert["labels"]["alertname"] for alert in http_json(f"{base}/api/v1/alerts")["data"]["alerts"]}
    assert not firing & {"DigitsNoModelLoaded", "DigitsServeDown"}, firing


def test_compose_healthcheck_command(stack: dict) -> None:
    """compose.yaml's health check exits 0 against the serving service and non-zero without one."""
    test = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["serve"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and test[1].startswith("python -c ") and "localhost:8500" in test[1]

    def run(port: int) -> int:
        # The image's `python` is the venv's; here it is this interpreter.
        command = test[1].replace("python", shlex.quote(sys.executable), 1)
        command = command.replace("localhost:8500", f"127.0.0.1:{port}")
        return subprocess.run(["sh", "-c", command], check=False, capture_output=True, timeout=30).returncode

    assert run(stack["grpc_port"]) == 0
    assert run(free_port()) != 0
