"""jobs/kt_compat.py: the pinned keras-tuner, the internals the job relies on, and the explicit patch."""

from __future__ import annotations

import subprocess
import sys

import keras_tuner as kt
import pytest
from keras_tuner.src.distribute import oracle_client

from jobs import kt_compat
from jobs.errors import EXIT_SEARCH, KerasTunerVersionError, SearchError
from tests.support import REPO


def test_the_installed_keras_tuner_is_the_pinned_one() -> None:
    assert kt_compat.installed_version() == kt_compat.PINNED_VERSION
    kt_compat.check_version()


def test_every_internal_the_job_relies_on_exists() -> None:
    assert kt_compat.missing_internals() == []
    kt_compat.check()


def test_a_vanished_attribute_fails_the_check_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(oracle_client, "TIMEOUT")
    assert kt_compat.missing_internals() == ["keras_tuner.src.distribute.oracle_client.TIMEOUT"]
    with pytest.raises(KerasTunerVersionError, match="lacks keras_tuner.src.distribute.oracle_client.TIM"):
        kt_compat.check()


def test_a_vanished_oracle_attribute_is_found_too(monkeypatch: pytest.MonkeyPatch) -> None:
    original = kt.oracles.RandomSearchOracle.__init__

    def without_retry_queue(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        del self._retry_queue  # as if a release renamed it

    monkeypatch.setattr(kt.oracles.RandomSearchOracle, "__init__", without_retry_queue)
    assert kt_compat.missing_internals() == ["Oracle._retry_queue"]


def test_another_version_fails_at_start_up_saying_what_to_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kt_compat, "installed_version", lambda: "1.5.0")
    with pytest.raises(KerasTunerVersionError) as caught:
        kt_compat.check_version()
    message = str(caught.value)
    assert "keras-tuner 1.5.0 is installed" in message and "checked against 1.4.8" in message
    assert "_retry_queue" in message and "oracle_client.TIMEOUT" in message and "PINNED_VERSION" in message
    assert caught.value.exit_code == EXIT_SEARCH


def test_retry_queue_helpers_drive_the_oracles_next_trial(tmp_path) -> None:
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"), max_trials=3, seed=1)
    tuner = kt.engine.base_tuner.BaseTuner(
        oracle=oracle, hypermodel=lambda hp: hp.Int("x", 0, 100), directory=str(tmp_path), project_name="p"
    )
    oracle = tuner.oracle
    first = oracle.create_trial("tuner0")
    oracle.ongoing_trials.pop("tuner0")
    kt_compat.requeue(oracle, first.trial_id)
    assert oracle.create_trial("tuner1").trial_id == first.trial_id  # served from the retry queue
    kt_compat.requeue(oracle, first.trial_id)
    assert kt_compat.unqueue(oracle, first.trial_id) and not kt_compat.unqueue(oracle, first.trial_id)


def test_set_rpc_timeout_sets_the_clients_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle_client, "TIMEOUT", oracle_client.TIMEOUT)  # restored afterwards
    kt_compat.set_rpc_timeout(12.5)
    assert oracle_client.TIMEOUT == 12.5


def test_the_atomic_writer_is_installed_when_a_tuner_is_built_not_on_import(tmp_path) -> None:
    code = f"""
import jobs.cli, jobs.pipeline, jobs.search, jobs.tuners, jobs.distributed.chief, jobs.distributed.worker
from keras_tuner.src import utils
from jobs import kt_compat
assert utils.save_json is not kt_compat.save_json_atomically, "patched on import"
from jobs.config import load_config
from jobs.data import split
from jobs.search import build_tuner
from tests.support.mnist import synthetic_arrays
from jobs.data import Mnist
a = synthetic_arrays(100, 20)
mnist = Mnist(a["train_images"], a["train_labels"], a["test_images"], a["test_labels"])
config = load_config("smoke", environ={{"TUNE_OUTPUT": {str(tmp_path)!r}}})
build_tuner(config, split(mnist, 20, 0))
assert utils.save_json is kt_compat.save_json_atomically, "not installed by build_tuner"
print("OK")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr[-3000:]


def test_only_keras_tuners_consecutive_failures_become_a_search_error(tmp_path) -> None:
    oracle = kt.oracles.RandomSearchOracle(
        objective=kt.Objective("score", "max"), max_trials=3, max_consecutive_failed_trials=1
    )
    kt.engine.base_tuner.BaseTuner(
        oracle=oracle, hypermodel=lambda hp: hp.Int("x", 0, 100), directory=str(tmp_path), project_name="p"
    )
    trial = oracle.create_trial("tuner0")
    trial.status = "FAILED"
    with pytest.raises(RuntimeError) as caught:
        oracle.end_trial(trial)  # the pinned Keras Tuner's own condition
    assert kt_compat.is_consecutive_failures(caught.value)
    with pytest.raises(SearchError, match="consecutive failures exceeded the limit of 1"):
        with kt_compat.search_failures():
            raise caught.value
    with pytest.raises(RuntimeError, match="out of memory") as other:
        with kt_compat.search_failures():
            raise RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory")
    assert not isinstance(other.value, SearchError)
