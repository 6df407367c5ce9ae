"""The job end to end on small synthetic data: search, final model, report, atomic export, failures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import modelrepo
from jobs import config as cfg
from jobs import pipeline
from jobs.errors import ExportError, SearchError
from jobs.progress import hyperband_budget
from jobs.runtime import output_paths
from jobs.search import build_tuner
from jobs.search_space import MlpHyperModel
from tests.support import free_port
from tests.support.jobs import tiny_config
from tests.support.mnist import synthetic_arrays


def _config(tmp: Path, data_dir: Path, **sections: dict) -> cfg.JobConfig:
    return cfg.load_config("smoke", environ={}, cli=tiny_config(tmp, data_dir, **sections))


@pytest.fixture(scope="module")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path
) -> tuple[cfg.JobConfig, pipeline.FinalResult]:
    config = _config(tmp_path_factory.mktemp("run"), synthetic_dir, search={"early_stopping_patience": 1})
    return config, pipeline.run(config)


def test_exported_model_loads_and_predicts_like_the_in_memory_model(smoke_run, synthetic_dir: Path) -> None:
    import tensorflow as tf

    config, result = smoke_run
    assert modelrepo.list_versions(output_paths(config).models, "mnist") == [1]
    loaded = tf.saved_model.load(str(result.path))
    serve = loaded.signatures[modelrepo.SIGNATURE_NAME]
    images = synthetic_arrays(1200, 300)["test_images"].astype(np.float32)
    outputs = serve(**{modelrepo.INPUT_KEY: tf.constant(images)})
    probabilities = outputs[modelrepo.OUTPUT_PROBABILITIES].numpy()
    np.testing.assert_allclose(probabilities, result.model.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_array_equal(outputs[modelrepo.OUTPUT_CLASSES].numpy(), probabilities.argmax(axis=1))
    labels = synthetic_arrays(1200, 300)["test_labels"]
    assert result.test_accuracy == pytest.approx(float(np.mean(probabilities.argmax(axis=1) == labels)))
    assert result.test_accuracy > 0.5  # the synthetic digits are learnable


def test_metadata_records_the_run(smoke_run) -> None:
    config, result = smoke_run
    metadata = modelrepo.read_metadata(result.path)
    assert metadata.version == 1 and metadata.tuner == "random"
    assert metadata.final_model == "retrain" and "train+validation" in metadata.final_model_note
    assert metadata.test_accuracy == pytest.approx(result.test_accuracy)
    assert len(metadata.trials) == 2 and {t.status for t in metadata.trials} == {"COMPLETED"}
    scores = [t.val_accuracy for t in metadata.trials]
    assert scores == sorted(scores, reverse=True)  # best first
    assert metadata.val_accuracy == pytest.approx(scores[0])
    best = metadata.trials[0]
    assert metadata.history["accuracy"] and len(metadata.history["loss"]) == best.best_epoch
    assert set(metadata.hyperparameters) >= {"num_layers", "units_0", "learning_rate", "batch_size"}
    assert len(metadata.data_checksums) == 4 and metadata.library_versions["keras-tuner"] == "1.4.8"
    assert metadata.config["output"]["dir"] == config.output.dir
    assert metadata.search_seconds and metadata.total_seconds >= metadata.search_seconds


def test_report_is_complete(smoke_run) -> None:
    config, _ = smoke_run
    report = output_paths(config).report
    for name in ("learning_curves.png", "search.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(report / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["rank"] for row in rows] == ["1", "2"]
    assert float(rows[0]["val_accuracy"]) >= float(rows[1]["val_accuracy"])
    assert (report / "trials.md").read_text().count("| COMPLETED |") == 2
    events = list((report / "tensorboard").rglob("events.out.tfevents.*"))
    assert any(b"hparams" in path.read_bytes() for path in events)  # the HParams plugin's summaries
    assert (report / "tensorboard" / "final").is_dir()


def test_crash_during_export_leaves_no_visible_version(smoke_run, monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.export
    from jobs import data

    config, _ = smoke_run
    config = config.model_copy(update={"final": cfg.FinalConfig(mode="best_trial")})

    def crash(model, path: Path) -> None:
        (path / "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(jobs.export, "write_saved_model", crash)
    run = pipeline.prepare(config)
    tuner = build_tuner(config, run.splits, run.paths)  # reloads the finished search
    assert len(tuner.oracle.trials) == 2
    with pytest.raises(ExportError, match="disk full"):
        pipeline.finalize(tuner, run)
    model_dir = output_paths(config).models / "mnist"
    assert modelrepo.list_versions(model_dir.parent, "mnist") == [1]
    assert sorted(entry.name for entry in model_dir.iterdir()) == ["1"]  # no staging directory left
    assert isinstance(run.mnist, data.Mnist)


@pytest.mark.parametrize(
    ("kind", "tuner", "final"),
    [
        ("hyperband", {"max_epochs": 2, "factor": 2}, {"mode": "best_trial"}),
        ("bayesian", {"max_trials": 2, "num_initial_points": 1}, {"mode": "retrain", "epochs": 1}),
    ],
)
def test_other_tuners_and_final_modes(
    tmp_path: Path, synthetic_dir: Path, kind: str, tuner: dict, final: dict
) -> None:
    config = _config(
        tmp_path,
        synthetic_dir,
        tuner={"kind": kind, **tuner},
        final=final,
        space={"label_smoothing": [0.0, 0.1], "units": 16, "num_layers": 1},
        runtime={"tensorboard": False},
    )
    result = pipeline.run(config)
    metadata = modelrepo.read_metadata(result.path)
    assert metadata.tuner == kind and metadata.final_model == final["mode"]
    if kind == "hyperband":
        # Keras Tuner's brackets for max_epochs 2, factor 2, as the progress ETA computes them
        assert len(metadata.trials) == hyperband_budget(2, 2, 1)[0] == 5
        assert metadata.history.get("val_accuracy")  # the best trial's own curves
        assert "weights of trial" in metadata.final_model_note
    else:
        assert len(metadata.history["accuracy"]) == 1
    assert not (output_paths(config).report / "tensorboard").exists()


def test_failed_trial_is_recorded_and_the_search_goes_on(
    tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = MlpHyperModel.fit
    calls = []

    def fail_first(self, hp, model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("injected trial failure")
        return original(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(MlpHyperModel, "fit", fail_first)
    config = _config(tmp_path, synthetic_dir, tuner={"max_trials": 3}, runtime={"tensorboard": False})
    result = pipeline.run(config)
    metadata = modelrepo.read_metadata(result.path)
    assert [t.status for t in metadata.trials] == ["COMPLETED", "COMPLETED", "FAILED"]
    assert metadata.trials[-1].val_accuracy is None


def test_consecutive_failures_stop_the_search(
    tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_fail(self, hp, model, *args, **kwargs):
        raise ValueError("injected trial failure")

    monkeypatch.setattr(MlpHyperModel, "fit", always_fail)
    config = _config(tmp_path, synthetic_dir, tuner={"max_trials": 5, "max_consecutive_failed_trials": 2})
    with pytest.raises(SearchError, match="consecutive failures exceeded the limit of 2"):
        pipeline.run(config)
    trial_dirs = sorted(path.name for path in output_paths(config).tuner.glob("trial_*"))
    assert trial_dirs == ["trial_0", "trial_1"]  # stopped at the limit, no third trial
    assert not (output_paths(config).models).exists()


def test_a_runtime_error_in_the_chiefs_final_fit_is_not_a_search_error(
    tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A RuntimeError after the search (a GPU out of memory in the final fit, an I/O error surfacing as
    # one) must reach the Job as a retryable failure, not as exit 4 (FailJob): only Keras Tuner's
    # consecutive-failures condition is a fatal search error.
    import jobs.final
    from jobs.distributed.roles import Role

    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.setenv(name, "")  # restored (unset) afterwards: run_role exports the chief's role
        monkeypatch.delenv(name)
    config = _config(tmp_path, synthetic_dir, runtime={"tensorboard": False})
    pipeline.run(config, tuner_id="chief")  # a finished search whose state is the chief's (chief.json)
    monkeypatch.delenv("KERASTUNER_TUNER_ID")

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory")

    monkeypatch.setattr(jobs.final, "final_model", out_of_memory)
    chief = Role("chief", "chief", "127.0.0.1", free_port(), "environment")
    with pytest.raises(RuntimeError, match="OUT_OF_MEMORY"):
        pipeline.run_role(config, chief, export_again=True)  # the search is done: straight to the final fit
