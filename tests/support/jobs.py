"""Tiny job configs for the tuning-job tests (searches of a few seconds on the synthetic data) and the
job as a subprocess (``python -m jobs.tune``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess

import yaml

from tests.support import REPO


def tiny_config(output: Path, data_dir: Path, **sections: dict) -> dict:
    """A config mapping for a search of a few seconds on the synthetic data."""
    config = {
        "seed": 3,
        "tuner": {"kind": "random", "max_trials": 2},
        "search": {"epochs": 2, "train_subset": None},
        "space": {
            "num_layers": {"min": 1, "max": 2},
            "units": {"min": 16, "max": 32, "step": 16},
            "dropout": [0.0, 0.1],
            "learning_rate": {"min": 3e-3, "max": 1e-2, "sampling": "log"},
            "batch_size": [64],
            "lr_schedule": ["constant", "cosine"],
            "translate_pixels": [0, 1],
        },
        "data": {"dir": str(data_dir), "validation_size": 200},
        "final": {"mode": "retrain", "epochs": "best"},
        "output": {"dir": str(output)},
        "runtime": {"tensorboard": True},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def job_env(**extra: str) -> dict[str, str]:
    """The environment for a job subprocess: no TUNE_*/MNIST_* from the caller, quiet TensorFlow."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TUNE_", "MNIST_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def job_command(config_file: Path, *extra: str) -> list[str]:
    """``python -m jobs.tune`` (the README command, the image's entrypoint) on a smoke-based config."""
    return [sys.executable, "-m", "jobs.tune", "--preset", "smoke", "--config", str(config_file), *extra]


def run_job(command: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, env=env or job_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


FAILING_TRIALS = '''
"""Loaded at start-up (sitecustomize): every trial's fit raises, as a broken model or data would."""
import jobs.search_space


def _fail(self, hp, model, *args, **kwargs):
    raise ValueError("injected trial failure")


jobs.search_space.MlpHyperModel.fit = _fail
'''


def failing_trials_env(directory: Path) -> dict[str, str]:
    """A job environment whose process makes every trial fail (through a ``sitecustomize`` module)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(FAILING_TRIALS)
    return job_env(PYTHONPATH=f"{directory}{os.pathsep}{REPO}")


def run_in_terminal(command: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo-terminal, as a user at a shell would; returns the
    exit code and everything the terminal showed."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)  # the child holds it now; reads end with EIO once the child exits
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
        else:
            process.kill()
            raise AssertionError(f"{command} did not finish in {timeout} s")
        code = process.wait(timeout=30)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")
