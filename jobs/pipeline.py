"""The job's steps in order (config -> data -> search -> final model -> report and export), in one process
(:func:`run`) or as one role of a distributed search (:func:`run_role`). One export per search.

What every step shares is built once, by :func:`prepare`, into a :class:`RunContext`; the steps below it
(search, final model, export) take the values they need.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs import kt_compat
from jobs.config import JobConfig
from jobs.data import load_data
from jobs.errors import ExportError
from jobs.runtime import (
    ExportRecord,
    OutputPaths,
    library_versions,
    output_paths,
    read_export_record,
    setup_runtime,
    write_export_record,
)
from jobs.search import build_tuner, run_search

if TYPE_CHECKING:
    import keras_tuner as kt

    from jobs.data import Mnist, Splits
    from jobs.distributed.roles import Role
    from jobs.progress import SearchProgress
    from jobs.pushmetrics import ProgressPusher

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # under <output>/report: one folder per trial, "final" for the retrain


@dataclass
class FinalResult:
    """What a finished job published."""

    version: int
    path: Path
    test_accuracy: float
    val_accuracy: float | None
    hyperparameters: dict[str, Any]
    trials: int
    model: Any = None  # the exported keras.Model, in memory


@dataclass
class RunContext:
    """What one run's steps share, built once by :func:`prepare`."""

    config: JobConfig
    paths: OutputPaths
    mnist: Mnist
    splits: Splits
    progress: SearchProgress
    pusher: ProgressPusher
    started: float  # time.monotonic() when the run began

    @property
    def tensorboard_dir(self) -> Path | None:
        """``<output>/report/tensorboard`` when ``runtime.tensorboard`` is on, else None."""
        return self.paths.report / TENSORBOARD_DIR if self.config.runtime.tensorboard else None


def prepare(config: JobConfig, paths: OutputPaths | None = None) -> RunContext:
    """Data (before TensorFlow loads: bad data fails in a second), then seeds and devices, progress and the
    Pushgateway pusher; ``paths`` default to ``output_paths(config)``."""
    started = time.monotonic()
    mnist, splits = load_data(config)
    setup_runtime(config)
    from jobs.progress import SearchProgress
    from jobs.pushmetrics import ProgressPusher

    pusher = ProgressPusher(config.runtime.pushgateway)
    paths = paths or output_paths(config)
    return RunContext(config, paths, mnist, splits, SearchProgress(config), pusher, started)


def finalize(tuner: kt.Tuner, ctx: RunContext, search_seconds: float | None = None) -> FinalResult:
    """Final model, test score, report and atomic export of the next version; records it for reruns."""
    import modelrepo
    from jobs import report, tuners
    from jobs.export import export_model
    from jobs.final import final_model, score_on_test

    config, paths, splits = ctx.config, ctx.paths, ctx.splits
    final_logs = None if ctx.tensorboard_dir is None else ctx.tensorboard_dir / "final"
    chosen = final_model(tuner, config, splits, ctx.progress, final_logs)
    accuracy = score_on_test(chosen.model, splits)
    log.info("test accuracy %.4f (%s)", accuracy, config.final.mode)
    trials = tuners.trial_summaries(tuner, config.tuner.objective)
    report.write_report(
        paths.report,
        trials,
        config.tuner.objective,
        trial_history=chosen.trial_history,
        final_history=chosen.history if config.final.mode == "retrain" else None,
        title=f"{config.preset}: trial {chosen.best_trial}, final {config.final.mode}, "
        f"test accuracy {accuracy:.4f}",
        tensorboard=config.runtime.tensorboard,
        trial_epochs=chosen.trial_epochs,
    )
    metadata = modelrepo.ModelMetadata(
        model_name=config.output.model_name,
        tuner=config.tuner.kind,
        final_model=config.final.mode,
        final_model_note=chosen.note,
        hyperparameters=modelrepo.to_jsonable(chosen.values),
        val_accuracy=chosen.val_accuracy,
        test_accuracy=accuracy,
        history=chosen.history,
        trials=trials,
        data_checksums=ctx.mnist.checksums,
        library_versions=library_versions(),
        config=config.model_dump(mode="json"),
        search_seconds=search_seconds,
        total_seconds=time.monotonic() - ctx.started,
    )
    try:
        version, path = export_model(chosen.model, paths.models, metadata)
    except Exception as exc:  # any failure here means "no new version"; publish() cleaned up
        raise ExportError(f"export to {paths.models} failed: {exc}") from exc
    # A crash between the publish above and this record would let a rerun export once more.
    write_export_record(paths, config.output.model_name, version, path)
    return FinalResult(version, path, accuracy, chosen.val_accuracy, chosen.values, len(trials), chosen.model)


def already_exported(paths: OutputPaths, export_again: bool) -> ExportRecord | None:
    """The version this search published earlier, unless ``export_again``; None means "go on"."""
    record = read_export_record(paths)
    if record is None:
        return None
    if export_again:
        log.info(
            "this search already exported %s version %d; --export-again: publishing a new version",
            record.model_name,
            record.version,
        )
        return None
    log.info(
        "this search already exported %s version %d (%s); nothing to do (--export-again publishes anew; "
        "a new search needs another --output)",
        record.model_name,
        record.version,
        record.path,
    )
    return record


def run(config: JobConfig, tuner_id: str | None = None, export_again: bool = False) -> FinalResult | None:
    """The whole job in one process: data, search, final model, report, export.

    Returns None when this search had already exported (a rerun, or a retried pod): no second version.
    """
    kt_compat.check_version()
    paths = output_paths(config)
    if already_exported(paths, export_again) is not None:
        return None
    ctx = prepare(config, paths)
    from jobs.pushmetrics import ProgressWatcher

    with kt_compat.patched():
        tuner = build_tuner(config, ctx.splits, ctx.paths, tuner_id, ctx.progress)
        with ProgressWatcher(tuner.oracle, ctx.pusher, "val_accuracy"):
            search_seconds = run_search(tuner, config, ctx.splits, ctx.tensorboard_dir)
        result = finalize(tuner, ctx, search_seconds)
    ctx.pusher.success()
    return result


def run_role(config: JobConfig, role: Role, export_again: bool = False) -> FinalResult | None:
    """Chief or worker of a distributed search (docs/distributed.md); None if this process exports nothing."""
    from jobs.distributed.roles import apply_role, write_done_marker

    kt_compat.check_version()
    apply_role(role)  # Keras Tuner reads KERASTUNER_* when the tuner is built
    paths = output_paths(config)
    if role.kind == "chief" and already_exported(paths, export_again) is not None:
        # Workers of this run that are still waiting read the marker and exit 0.
        write_done_marker(paths.tuner, config.distributed.run_id, finalized=True)
        return None
    ctx = prepare(config, paths)
    from jobs.distributed import chief, worker

    if role.kind == "worker":
        # A worker's oracle lives on the chief: no resume accounting here, only per-epoch logging.
        with kt_compat.patched(rpc_timeout_seconds=config.distributed.rpc_timeout_seconds):
            tuner = build_tuner(config, ctx.splits, ctx.paths, role.tuner_id)
            tuner.progress = ctx.progress

            def search() -> float:
                return run_search(tuner, config, ctx.splits, ctx.tensorboard_dir)

            worker.run_worker(tuner, search, role, config.distributed)
        return None

    with kt_compat.patched():
        tuner = build_tuner(config, ctx.splits, ctx.paths, role.tuner_id, ctx.progress)

        def final() -> FinalResult:
            return finalize(tuner, ctx, search_seconds=time.monotonic() - ctx.started)

        return chief.run_chief(tuner, final, role, config.distributed, ctx.pusher)
