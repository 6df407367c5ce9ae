"""Helpers for the distributed tests: free ports, a real Pushgateway, tiny data, and job processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, free_port
from tests.support.mnist import synthetic_arrays, write_idx

PUSHGATEWAY = "prometheus-pushgateway"


@contextmanager
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway on loopback; yields its host:port."""
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "pushgateway.log").open("w")
    # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: metrics of one test
    # (or of another suite) would reappear in the next gateway. Keep this one in memory only.
    args = [PUSHGATEWAY, f"--web.listen-address={address}", "--persistence.file="]
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = (tmp_path / "pushgateway.log").read_text()
                    raise RuntimeError(f"Pushgateway did not start: {output}") from exc
                time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def gateway_samples(address: str, job: str = "mnist_tune") -> dict[str, float]:
    """The samples the Pushgateway exposes for ``job``, by metric name."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("job") == job and sample.name.startswith("digits_tune_"):
                samples[sample.name] = sample.value
    return samples


def write_tiny_mnist(directory: Path, train: int = 600, test: int = 200, seed: int = 0) -> Path:
    """A small learnable MNIST (tests/support/mnist.py) as real IDX files."""
    write_idx(directory, synthetic_arrays(train, test, seed))
    return directory


def write_search_config(
    path: Path, data_dir: Path, output: Path, max_trials: int, epochs: int = 2, **distributed: float
) -> Path:
    """A smoke-sized random search with short distributed timeouts."""
    config = {
        "seed": 5,
        "tuner": {"kind": "random", "max_trials": max_trials},
        "search": {"epochs": epochs, "train_subset": None, "early_stopping_patience": None},
        "space": {
            "num_layers": {"min": 1, "max": 2},
            "units": {"min": 16, "max": 64, "step": 16},
            "dropout": [0.0, 0.1],
            "learning_rate": {"min": 3e-3, "max": 1e-2, "sampling": "log"},
            "batch_size": [32, 64],
            "lr_schedule": ["constant", "cosine"],
            "translate_pixels": [0, 1],
        },
        "data": {"dir": str(data_dir), "validation_size": 100},
        "final": {"mode": "best_trial", "epochs": "best"},
        "output": {"dir": str(output)},
        "runtime": {"tensorboard": False},
        "distributed": {
            "connect_timeout_seconds": 90,
            "rpc_timeout_seconds": 60,
            "heartbeat_seconds": 0.5,
            "lease_timeout_seconds": 6,
            "poll_seconds": 0.3,
            "idle_timeout_seconds": 90,
            "shutdown_grace_seconds": 5,
            **distributed,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


class JobProcess:
    """``python -m jobs.tune`` as one role of a distributed search on 127.0.0.1."""

    def __init__(
        self, tuner_id: str, port: int, config: Path, logs: Path, extra_env: dict[str, str] | None = None
    ):
        self.tuner_id = tuner_id
        self.log_path = logs / f"{tuner_id}-{time.monotonic_ns()}.log"
        env = {
            **os.environ,
            "KERASTUNER_TUNER_ID": tuner_id,
            "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": str(REPO),
            **(extra_env or {}),
        }
        for name in (
            "TUNE_PRESET",
            "TUNE_OUTPUT",
            "TUNE_PUSHGATEWAY",
            "MNIST_DATA_DIR",
            "JOB_COMPLETION_INDEX",
        ):
            if extra_env is None or name not in extra_env:
                env.pop(name, None)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.tune", "--preset", "smoke", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()
