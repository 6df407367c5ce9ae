"""The CLI as a process: resume after SIGKILL mid-trial, and the documented exit codes."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelrepo
from jobs import config as cfg
from jobs import pipeline
from jobs.progress import hyperband_budget
from tests.support import REPO
from tests.support.jobs import job_command, job_env, run_job, tiny_config, write_config

HYPERBAND = {"kind": "hyperband", "max_epochs": 3, "factor": 3}


def _trials(output: Path) -> dict[str, str]:
    """trial id -> status, from Keras Tuner's own files."""
    import json

    return {
        path.parent.name.removeprefix("trial_"): json.loads(path.read_text())["status"]
        for path in (output / "tuner").glob("trial_*/trial.json")
    }


def test_rerun_after_sigkill_mid_trial_finishes_the_same_search(tmp_path: Path, synthetic_dir: Path) -> None:
    output = tmp_path / "killed"
    config_file = write_config(
        tmp_path / "job.yaml",
        tiny_config(output, synthetic_dir, tuner=HYPERBAND, runtime={"tensorboard": False}),
    )
    process = subprocess.Popen(
        job_command(config_file),
        cwd=REPO,
        env=job_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    # Kill during the warm-started round of the first bracket (epoch 2 of 3): mid-trial, weights loaded
    # from an earlier trial, and completed trials already on disk.
    deadline = time.monotonic() + 240
    killed_line = ""
    assert process.stderr is not None
    for line in process.stderr:
        if re.search(r"trial \d+ epoch 2/3", line):
            process.send_signal(signal.SIGKILL)
            killed_line = line
            break
        assert time.monotonic() < deadline, "the search never reached the point to kill it"
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, killed_line
    running = [trial_id for trial_id, status in _trials(output).items() if status == "RUNNING"]
    assert len(running) == 1
    finished_before = {
        trial_id: (output / "tuner" / f"trial_{trial_id}" / "history.json").read_bytes()
        for trial_id, status in _trials(output).items()
        if status == "COMPLETED"
    }
    assert finished_before

    rerun = run_job(job_command(config_file))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming:" in rerun.stderr
    after = _trials(output)
    assert set(after.values()) == {"COMPLETED"}
    assert after[running[0]] == "COMPLETED"  # the interrupted trial ran again under its own id
    for trial_id, history in finished_before.items():  # completed trials were not run again
        assert (output / "tuner" / f"trial_{trial_id}" / "history.json").read_bytes() == history

    # The same search without interruption ends with as many trials.
    uninterrupted = cfg.load_config(
        "smoke",
        environ={},
        cli=tiny_config(tmp_path / "whole", synthetic_dir, tuner=HYPERBAND, runtime={"tensorboard": False}),
    )
    whole = pipeline.run(uninterrupted)
    assert len(after) == whole.trials == hyperband_budget(3, 3, 1)[0] == 6
    metadata = modelrepo.read_metadata(output / "models" / "mnist" / "1")
    assert len(metadata.trials) == len(after)


def _save_cut_short(trial, path: Path, error: type[Exception]) -> None:
    """Keras Tuner's own ``Trial.save``, with the write cut off past the old file's size (RLIMIT_FSIZE:
    Python ignores SIGXFSZ, so the write fails with EFBIG after a partial write)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 16, hard))
    try:
        with pytest.raises(error):
            trial.save(str(path))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_tuner_state_survives_a_write_cut_short(tmp_path: Path) -> None:
    import keras_tuner as kt
    import tensorflow as tf
    from keras_tuner.src import utils as kt_utils

    from jobs import kt_compat

    hp = kt.HyperParameters()
    hp.Fixed("units", 512)
    trial = kt.engine.trial.Trial(hp.copy(), trial_id="7")
    for name in [f"extra_{i}" for i in range(50)]:  # the next save is much longer than the first
        trial.hyperparameters.Fixed(name, "x" * 20)

    ours = tmp_path / "ours" / "trial.json"
    ours.parent.mkdir()
    with kt_compat.patched():  # as the job runs
        kt.engine.trial.Trial(hp, trial_id="7").save(str(ours))
        before = ours.read_text()
        _save_cut_short(trial, ours, OSError)
    assert ours.read_text() == before  # the previous state, whole
    assert kt.engine.trial.Trial.load(str(ours)).hyperparameters.values == {"units": 512}
    assert [path.name for path in ours.parent.iterdir()] == ["trial.json"]  # no temporary left

    # Keras Tuner's own in-place writer (back once the job's patches are undone), same cut: the file it
    # leaves cannot be reloaded.
    assert kt_utils.save_json is not kt_compat.save_json_atomically
    theirs = tmp_path / "theirs" / "trial.json"
    theirs.parent.mkdir()
    kt.engine.trial.Trial(hp, trial_id="7").save(str(theirs))
    _save_cut_short(trial, theirs, tf.errors.OutOfRangeError)  # through tf.io.gfile
    with pytest.raises(ValueError):  # json.JSONDecodeError
        kt.engine.trial.Trial.load(str(theirs))


def test_exit_code_3_for_bad_data(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_job(job_command(write_config(tmp_path / "job.yaml", tiny_config(tmp_path / "out", empty))))
    assert result.returncode == 3
    assert "missing train-images-idx3-ubyte" in result.stderr


def test_exit_code_4_for_a_corrupt_tuner_state(tmp_path: Path, synthetic_dir: Path) -> None:
    output = tmp_path / "out"
    project = output / "tuner"
    project.mkdir(parents=True)
    (project / "tuner0.json").write_text("{}")
    (project / "oracle.json").write_text("{not json")
    result = run_job(job_command(write_config(tmp_path / "job.yaml", tiny_config(output, synthetic_dir))))
    assert result.returncode == 4
    assert "cannot create or reload the tuner" in result.stderr


def test_exit_code_5_on_export_failure_then_rerun_exports_without_searching_again(
    tmp_path: Path, synthetic_dir: Path
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "models").write_text("a file where the model repository should be")
    config_file = write_config(
        tmp_path / "job.yaml",
        tiny_config(output, synthetic_dir, tuner={"max_trials": 1}, final={"mode": "best_trial"}),
    )
    failed = run_job(job_command(config_file))
    assert failed.returncode == 5, failed.stderr[-3000:]
    assert "export failed" in failed.stderr
    assert _trials(output) == {"0": "COMPLETED"}
    (output / "models").unlink()
    rerun = run_job(job_command(config_file))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming: 1 trials already finished" in rerun.stderr
    assert "trial 0:" not in rerun.stderr  # the finished search did not run again
    assert modelrepo.list_versions(output / "models", "mnist") == [1]


@pytest.mark.slow
def test_real_mnist_recorded_test_accuracy_matches_a_fresh_evaluation(tmp_path: Path) -> None:
    import numpy as np
    import tensorflow as tf

    from jobs import data

    data_dir = os.environ.get("MNIST_DATA_DIR")
    if not data_dir:
        pytest.fail("MNIST_DATA_DIR must point at the official MNIST files for the slow tests")
    result = run_job(
        [
            sys.executable,
            "-m",
            "jobs.tune",
            "--preset",
            "smoke",
            "--data-dir",
            data_dir,
            "--output",
            str(tmp_path),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version = tmp_path / "models" / "mnist" / "1"
    metadata = modelrepo.read_metadata(version)
    mnist = data.load_mnist(data_dir)
    assert metadata.data_checksums == mnist.checksums
    serve = tf.saved_model.load(str(version)).signatures[modelrepo.SIGNATURE_NAME]
    images = tf.constant(mnist.x_test.astype(np.float32))
    classes = serve(**{modelrepo.INPUT_KEY: images})[modelrepo.OUTPUT_CLASSES].numpy()
    fresh = float(np.mean(classes == mnist.y_test))
    assert metadata.test_accuracy == pytest.approx(fresh, abs=1e-6)
    assert fresh > 0.85  # a real, if tiny, search
