"""jobs/kt_compat.py against the pinned keras-tuner: the internals the job relies on, the Oracle adapter, the
patches context and the one fatal search condition."""

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


def _tuner(directory, tuner_id: str = "tuner0", trials: int = 3):
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"), max_trials=trials, seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERASTUNER_TUNER_ID", tuner_id)
        return kt.engine.base_tuner.BaseTuner(
            oracle=oracle, hypermodel=lambda hp: hp.Int("x", 0, 9), directory=str(directory), project_name="p"
        )


def test_the_adapter_reassigns_a_running_trial_to_the_next_tuner_that_asks(tmp_path) -> None:
    oracle = _tuner(tmp_path).oracle
    adapter = kt_compat.OracleAdapter(oracle)
    first = oracle.create_trial("tuner0")
    assert adapter.running_trial("tuner0") is first and list(adapter.running()) == ["tuner0"]
    assert adapter.connected_tuners() == {"tuner0"}
    assert adapter.trials() == [first] and adapter.trial(first.trial_id) is first
    assert adapter.reassign("tuner0") is first and adapter.running() == {}
    assert adapter.reassign("tuner0") is None  # holds nothing any more
    assert oracle.create_trial("tuner1").trial_id == first.trial_id  # served from the retry queue
    adapter.requeue(first.trial_id)
    assert adapter.unqueue(first.trial_id) and not adapter.unqueue(first.trial_id)


def test_the_adapter_leaves_a_reloaded_trial_with_the_tuner_a_previous_chief_gave_it(tmp_path) -> None:
    before = _tuner(tmp_path)
    running = before.oracle.create_trial("tuner1")
    before.save()  # oracle.json says tuner1 holds the trial
    handed_out = kt_compat.OracleAdapter.handed_out_before(before.project_dir)
    assert handed_out == {"tuner1": running.trial_id}

    oracle = _tuner(tmp_path).oracle  # reload() put the running trial back in the retry queue
    adapter = kt_compat.OracleAdapter(oracle)
    assert adapter.running() == {}
    assert adapter.keep_with("tuner1", running.trial_id)
    assert not adapter.keep_with("tuner2", running.trial_id)  # no longer queued: not given twice
    assert not adapter.keep_with("tuner2", "no-such-trial")
    assert adapter.running_trial("tuner1").trial_id == running.trial_id
    assert oracle.create_trial("tuner2").trial_id != running.trial_id  # the next trial is a new one
    assert kt_compat.OracleAdapter.handed_out_before(tmp_path / "nowhere") == {}


def test_the_adapter_turns_the_oracles_display_off(tmp_path) -> None:
    oracle = _tuner(tmp_path).oracle
    kt_compat.OracleAdapter(oracle).quiet()
    assert oracle.verbose == 0


def test_patches_apply_inside_the_context_only_never_on_import_or_first_use(tmp_path) -> None:
    code = f"""
import jobs.cli, jobs.pipeline, jobs.search, jobs.tuners, jobs.distributed.chief, jobs.distributed.worker
from keras_tuner.src import config as kt_config, utils
from keras_tuner.src.distribute import oracle_client
from jobs import kt_compat
from jobs.config import load_config
from jobs.data import Mnist, split
from jobs.runtime import output_paths
from jobs.search import build_tuner
from tests.support.mnist import synthetic_arrays

original = (utils.save_json, kt_config.DEBUG, oracle_client.TIMEOUT)
assert original[0] is not kt_compat.save_json_atomically and original[1], "patched on import"
a = synthetic_arrays(100, 20)
splits = split(Mnist(a["train_images"], a["train_labels"], a["test_images"], a["test_labels"]), 20, 0)
config = load_config("smoke", environ={{"TUNE_OUTPUT": {str(tmp_path)!r}}})
build_tuner(config, splits, output_paths(config))
assert (utils.save_json, kt_config.DEBUG, oracle_client.TIMEOUT) == original, "patched on first use"
with kt_compat.patched(rpc_timeout_seconds=12.5):
    assert utils.save_json is kt_compat.save_json_atomically
    assert kt_config.DEBUG is False and oracle_client.TIMEOUT == 12.5
    with kt_compat.patched():  # entered again: Keras Tuner's own writer is still the one underneath
        kt_compat.keras_tuner_save_json({str(tmp_path / "x.json")!r}, {{"a": 1}})
    assert utils.save_json is kt_compat.save_json_atomically and oracle_client.TIMEOUT == 12.5
    kt_compat.keras_tuner_save_json({str(tmp_path / "x.json")!r}, {{"a": 1}})
assert (utils.save_json, kt_config.DEBUG, oracle_client.TIMEOUT) == original, "not restored on exit"
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


def _reaches_into_keras_tuner(path) -> list[str]:
    """Where ``path`` touches Keras Tuner beyond its public API: ``keras_tuner.src`` imports, the Oracle
    attributes of :data:`kt_compat.ORACLE_ATTRIBUTES` on anything named ``oracle``, or its state file."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{node.lineno}: imports {n}" for n in names if n.startswith("keras_tuner.src")]
        elif isinstance(node, ast.Attribute) and node.attr in kt_compat.ORACLE_ATTRIBUTES:
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if owner_name.endswith("oracle"):
                found.append(f"{node.lineno}: {owner_name}.{node.attr}")
        elif isinstance(node, ast.Constant) and node.value == kt_compat.ORACLE_STATE_FILE:
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_no_job_module_but_kt_compat_reaches_into_keras_tuner() -> None:
    reaching = {
        str(path.relative_to(REPO)): where
        for path in sorted((REPO / "jobs").rglob("*.py"))
        if path.name != "kt_compat.py" and (where := _reaches_into_keras_tuner(path))
    }
    assert reaching == {}
