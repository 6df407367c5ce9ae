"""A chief and two workers as separate processes on 127.0.0.1 run a real (tiny) search end to end.

Each test costs three TensorFlow processes on a tiny synthetic MNIST: about a minute on two cores.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

import modelrepo
from tests.support.distributed import (
    JobProcess,
    free_port,
    gateway_samples,
    pushgateway,
    write_search_config,
    write_tiny_mnist,
)

TRIALS = 4
TIMEOUT = 240  # seconds for a whole search; a healthy one takes about a minute here


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture
def search(tmp_path: Path, data_dir: Path):
    """Start job processes on one port and one output folder; kill leftovers at the end."""
    output = tmp_path / "run"
    config = write_search_config(tmp_path / "config.yaml", data_dir, output, TRIALS)
    port = free_port()
    started: list[JobProcess] = []

    def start(tuner_id: str, **env: str) -> JobProcess:
        job = JobProcess(tuner_id, port, config, tmp_path, env)
        started.append(job)
        return job

    start.output = output  # type: ignore[attr-defined]
    yield start
    for job in started:
        job.stop()


def wait_for(job: JobProcess, pattern: str, timeout: float = 120) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, job.log())
        if match:
            return match
        assert job.proc.poll() is None, f"{job.tuner_id} exited early:\n{job.log()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{job.tuner_id}: no {pattern!r} within {timeout} s:\n{job.log()[-3000:]}")


def finish(*jobs: JobProcess) -> None:
    for job in jobs:
        code = job.wait(TIMEOUT)
        assert code == 0, f"{job.tuner_id} exited {code}:\n{job.log()[-4000:]}"


def trial_statuses(output: Path) -> dict[str, str]:
    statuses = {}
    for path in (output / "tuner").glob("trial_*/trial.json"):
        record = json.loads(path.read_text())
        statuses[record["trial_id"]] = record["status"]
    return statuses


def assert_one_export_of_every_trial(output: Path) -> None:
    assert trial_statuses(output) == {f"{i}": "COMPLETED" for i in range(TRIALS)}
    assert modelrepo.list_versions(output / "models", "mnist") == [1]
    metadata = modelrepo.read_metadata(output / "models" / "mnist" / "1")
    assert len(metadata.trials) == TRIALS
    assert metadata.test_accuracy is not None


def test_chief_and_two_workers_complete_the_search_with_one_export(search, tmp_path: Path) -> None:
    with pushgateway(tmp_path) as gateway:
        chief = search("chief", TUNE_PUSHGATEWAY=gateway)
        workers = [search("tuner1"), search("tuner2")]
        finish(*workers, chief)
        samples = gateway_samples(gateway)
    assert_one_export_of_every_trial(search.output)
    ran = [len(re.findall(r"INFO jobs.tuners: trial \d+ done", w.log())) for w in workers]
    assert sum(ran) == TRIALS  # every trial ran on a worker, none on the chief, none twice
    assert "test accuracy" not in "".join(w.log() for w in workers)  # only the chief scores and exports
    assert samples["digits_tune_trials_completed"] == TRIALS
    assert samples["digits_tune_trials_failed"] == 0
    assert 0 < samples["digits_tune_best_val_accuracy"] <= 1
    assert samples["digits_tune_elapsed_seconds"] > 0
    assert samples["digits_tune_last_success_timestamp_seconds"] > time.time() - 600
    # The chief started again on the same volume (a retried pod, or a new Job): no second version.
    again = search("chief")
    assert again.wait(120) == 0, again.log()[-3000:]
    assert "this search already exported mnist version 1" in again.log()
    assert modelrepo.list_versions(search.output / "models", "mnist") == [1]


def test_a_worker_killed_mid_trial_loses_no_trial(search) -> None:
    chief = search("chief")
    victim, survivor = search("tuner1"), search("tuner2")
    lost = wait_for(victim, r"INFO jobs.tuners: trial (\d+): ").group(1)
    victim.kill()  # mid-trial: no heartbeat, no result; its lease runs out and tuner2 takes it over
    finish(survivor, chief)
    assert_one_export_of_every_trial(search.output)
    assert re.search(rf"trial {lost}: no word from worker tuner1 .*handing it out again", chief.log())
    assert re.search(rf"INFO jobs.tuners: trial {lost} done", survivor.log())


def test_a_killed_and_restarted_chief_finishes_the_search(search) -> None:
    chief = search("chief")
    workers = [search("tuner1"), search("tuner2")]
    wait_for(chief, r"trial \d+ COMPLETED")  # at least one result is on the volume
    chief.kill()
    restarted = search("chief")  # what the Job does: the same index, the same volume
    finish(*workers, restarted)
    assert_one_export_of_every_trial(search.output)
    assert "INFO jobs.tuners: keras-tuner: Reloading Tuner from" in restarted.log()  # via logging


def test_a_worker_without_a_chief_exits_6_within_its_connect_timeout(tmp_path: Path, data_dir: Path) -> None:
    config = write_search_config(
        tmp_path / "config.yaml", data_dir, tmp_path / "run", TRIALS, connect_timeout_seconds=2
    )
    worker = JobProcess("tuner1", free_port(), config, tmp_path)  # nobody listens on that port
    try:
        assert worker.wait(120) == 6, worker.log()[-3000:]
    finally:
        worker.stop()
    assert "not reachable within 2 s" in worker.log()
