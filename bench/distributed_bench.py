"""Wall time of the same small search run by one process and by a chief plus N workers on this machine.

    .venv/bin/python bench/distributed_bench.py [--workers 2] [--trials 6] [--epochs 2] [--train-subset 2000]

Runs ``python -m jobs.tune --preset smoke`` (MNIST from MNIST_DATA_DIR or ../shared/datasets/mnist) in a
temporary output folder for each layout and prints a table. Each layout starts from an empty tuner dir.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, args: argparse.Namespace, output: Path) -> Path:
    config = {
        "tuner": {"kind": "random", "max_trials": args.trials},
        "search": {"epochs": args.epochs, "train_subset": args.train_subset, "early_stopping_patience": None},
        "data": {"dir": args.data_dir},
        "final": {"mode": "best_trial", "epochs": "best"},  # the export is not what we measure
        "output": {"dir": str(output)},
        "runtime": {"tensorboard": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def log_time(text: str, marker: str) -> float | None:
    """Unix time of the first log line containing ``marker``."""
    for line in text.splitlines():
        match = STAMP.match(line)
        if match and marker in line:
            return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def run_layout(args: argparse.Namespace, workers: int, workdir: Path) -> dict[str, float]:
    output = workdir / f"run-{workers}"
    config = write_config(workdir / f"config-{workers}.yaml", args, output)
    port = free_port()
    roles = ["standalone"] if workers == 0 else ["chief"] + [f"tuner{i}" for i in range(1, workers + 1)]
    base_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    for name in (
        "KERASTUNER_TUNER_ID",
        "KERASTUNER_ORACLE_IP",
        "KERASTUNER_ORACLE_PORT",
        "JOB_COMPLETION_INDEX",
    ):
        base_env.pop(name, None)
    started = time.time()
    procs = []
    for role in roles:
        env = dict(base_env)
        if role != "standalone":
            env.update(
                KERASTUNER_TUNER_ID=role, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port)
            )
        log = (workdir / f"{workers}-{role}.log").open("w")
        cmd = [sys.executable, "-m", "jobs.tune", "--preset", "smoke", "--config", str(config)]
        procs.append(
            (role, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        )
    for role, proc, log in procs:
        code = proc.wait()
        log.close()
        if code != 0:
            sys.exit(f"{role} exited {code}; see {workdir / f'{workers}-{role}.log'}")
    total = time.time() - started
    main_log = (workdir / f"{workers}-{roles[0]}.log").read_text()
    ready = log_time(main_log, "data from")
    done = log_time(main_log, "search done" if workers else "search finished")
    return {"total": total, "search": (done - ready) if ready and done else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MNIST_DATA_DIR", str(REPO.parent / "shared" / "datasets" / "mnist")),
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distributed-bench-") as tmp:
        results = {n: run_layout(args, n, Path(tmp)) for n in (0, args.workers)}
    print(
        f"{args.trials} trials x {args.epochs} epochs on {args.train_subset} examples, {os.cpu_count()} CPUs"
    )
    print("| layout | wall time, whole job (s) | search: data loaded -> last trial done (s) |")
    print("| --- | ---: | ---: |")
    for workers, result in results.items():
        layout = "1 process (standalone)" if workers == 0 else f"chief + {workers} workers"
        print(f"| {layout} | {result['total']:.1f} | {result['search']:.1f} |")


if __name__ == "__main__":
    main()
