"""``python -m jobs.promote``: publish the best Katib trial's model as the next version of the model
repository, once.

The trial is the Experiment's ``status.currentOptimalTrial`` (``--experiment``: the Experiment as YAML or
JSON, e.g. ``kubectl get experiment mnist-seed -o yaml``) or, without it, the best record among the trial
folders (``jobs.trial``'s ``trial.json``). Its model is rebuilt by the trial's own code, its best epoch's
weights loaded, scored once on the official test set and exported like the tuning job's models (same
layout, ``metadata.json``, atomic publish), so the serving side does not change. A rerun finds the
version it published (its ``final_model_note`` names the trial) and publishes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from jobs import logs
from jobs.config import load_config
from jobs.errors import EXIT_INTERRUPTED, EXIT_OK, ConfigError, DataError, ExportError, JobError, SearchError

log = logging.getLogger(__spec__.name)  # "jobs.promote" under python -m too


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from jobs.errors import describe_exit_codes

    parser = argparse.ArgumentParser(
        prog="python -m jobs.promote",
        description="Publish the best Katib trial's model (python -m jobs.trial) into OUTPUT/models as the "
        "next version, with its metadata and official test-set score; a rerun publishes nothing.",
        epilog=describe_exit_codes(),
    )
    parser.add_argument("--trials-dir", required=True, help="folder with one folder per trial (trial.json)")
    parser.add_argument(
        "--experiment", help="the Experiment as YAML or JSON: its status.currentOptimalTrial picks the trial"
    )
    parser.add_argument(
        "--output",
        default=os.environ.get("TUNE_OUTPUT"),
        help="output folder; the model goes to OUTPUT/models (default: TUNE_OUTPUT)",
    )
    parser.add_argument(
        "--data-dir", help="MNIST folder or mnist.npz (default: MNIST_DATA_DIR, else the trial's)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def read_records(trials_dir: Path) -> dict[str, dict[str, Any]]:
    """Every finished trial's record under ``trials_dir``, by trial name."""
    from jobs.trial import RECORD_FILE

    if not trials_dir.is_dir():
        raise ConfigError(f"--trials-dir {trials_dir}: no such folder")
    records = {}
    for path in sorted(trials_dir.glob(f"*/{RECORD_FILE}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable trial record: {exc}") from exc
        records[record["trial"]] = {**record, "dir": str(path.parent)}
    return records


def optimal_trial(experiment_file: Path) -> tuple[str, str]:
    """(trial name, algorithm) from an Experiment's ``status.currentOptimalTrial``."""
    try:
        experiment = yaml.safe_load(experiment_file.read_text())  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--experiment {experiment_file}: cannot read it: {exc}") from exc
    if not isinstance(experiment, dict) or experiment.get("kind") != "Experiment":
        raise ConfigError(f"--experiment {experiment_file}: not a Katib Experiment")
    name = ((experiment.get("status") or {}).get("currentOptimalTrial") or {}).get("bestTrialName")
    if not name:
        raise ConfigError(
            f"--experiment {experiment_file}: status.currentOptimalTrial.bestTrialName is empty "
            "(no trial has succeeded yet)"
        )
    algorithm = ((experiment.get("spec") or {}).get("algorithm") or {}).get("algorithmName", "")
    return name, algorithm


def best_record(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record with the best objective (ties: the lower val_loss)."""
    if not records:
        raise SearchError("no finished trial (trial.json) to promote")
    objective = next(iter(records.values()))["objective"]
    sign = 1 if objective.endswith("accuracy") else -1
    return max(records.values(), key=lambda r: (sign * r[objective], -r["val_loss"]))


def marker(record: dict[str, Any]) -> str:
    """How a published version names its trial (a rerun looks for it)."""
    return f"katib trial {record['trial']} ({Path(record['dir']).parent.name})"


def published_version(models_root: Path, model_name: str, record: dict[str, Any]) -> int | None:
    """The version already published from this trial, if any."""
    import modelrepo

    for version in modelrepo.list_versions(models_root, model_name):
        path = modelrepo.version_dir(models_root, model_name, version)
        try:
            note = modelrepo.read_metadata(path).final_model_note
        except modelrepo.ModelRepositoryError:
            continue
        if note.startswith(marker(record)):
            return version
    return None


def promote(
    trials_dir: Path, output: Path, experiment: Path | None = None, data_dir: str | None = None
) -> tuple[int, Path] | None:
    """Publish the best trial's model; returns (version, path), or None if it was published before."""
    records = read_records(trials_dir)
    algorithm = ""
    if experiment is not None:
        name, algorithm = optimal_trial(experiment)
        if name not in records:
            raise DataError(f"the Experiment's best trial {name} has no record in {trials_dir}")
        record = records[name]
    else:
        record = best_record(records)
    overrides = dict(record["config"])
    overrides.pop("preset", None)
    if data_dir or os.environ.get("MNIST_DATA_DIR"):
        overrides["data"] = {**overrides["data"], "dir": data_dir or os.environ["MNIST_DATA_DIR"]}
    config = load_config(record["preset"], None, {}, overrides)
    models_root = output / "models"
    done = published_version(models_root, config.output.model_name, record)
    if done is not None:
        log.info(
            "trial %s is already version %d of %s: nothing to publish", record["trial"], done, models_root
        )
        return None
    return _publish(record, records, config, models_root, algorithm)


def _publish(
    record: dict[str, Any], records: dict[str, dict[str, Any]], config: Any, models_root: Path, algorithm: str
) -> tuple[int, Path]:
    import modelrepo
    from jobs.data import load_data
    from jobs.export import export_model
    from jobs.final import score_on_test
    from jobs.runtime import library_versions, setup_runtime
    from jobs.trial import trial_model

    mnist, splits = load_data(config)
    setup_runtime(config)
    model, _, _, values = trial_model(config, record["hyperparameters"], record["train_size"])
    weights = Path(record["dir"]) / record["weights"]
    try:
        with warnings.catch_warnings():  # the optimizer's state is not needed to serve: only the weights
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(str(weights))
    except (OSError, ValueError) as exc:
        raise DataError(f"{weights}: cannot load the trial's weights: {exc}") from exc
    accuracy = score_on_test(model, splits)
    log.info("trial %s: test accuracy %.4f", record["trial"], accuracy)
    summaries = [
        modelrepo.TrialSummary(
            trial_id=r["trial"],
            status="COMPLETED",
            hyperparameters=r["hyperparameters"],
            val_accuracy=r["val_accuracy"],
            best_epoch=r["best_epoch"],
            epochs_run=r["epochs_run"],
            seconds=r["seconds"],
        )
        for r in sorted(records.values(), key=lambda r: -r["val_accuracy"])
    ]
    metadata = modelrepo.ModelMetadata(
        model_name=config.output.model_name,
        tuner=f"katib {algorithm}".strip(),
        final_model="best_trial",
        final_model_note=f"{marker(record)}: its weights at its best epoch ({record['best_epoch']}), "
        f"trained on {record['train_size']} training examples; val_accuracy is that epoch's",
        hyperparameters=record["hyperparameters"],
        val_accuracy=record["val_accuracy"],
        test_accuracy=accuracy,
        history=record["history"],
        trials=summaries,
        data_checksums=mnist.checksums,
        library_versions=library_versions(),
        config=config.model_dump(mode="json"),
    )
    try:
        version, path = export_model(model, models_root, metadata)
    except Exception as exc:
        raise ExportError(f"export to {models_root} failed: {exc}") from exc
    log.info(
        "published trial %s as %s version %d at %s", record["trial"], config.output.model_name, version, path
    )
    return version, path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level)
    try:
        if not args.output:
            raise ConfigError("--output (or TUNE_OUTPUT) is required: the model goes to OUTPUT/models")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        promote(
            Path(args.trials_dir),
            Path(args.output),
            Path(args.experiment) if args.experiment else None,
            args.data_dir,
        )
    except JobError as exc:
        log.error("%s: %s", exc.label, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
