"""The tuning job: ``python -m jobs.tune --preset {seed,default,smoke} [...]`` (see docs/tuning.md).

Three steps a distributed run can split: :func:`build_tuner` (per process, by ``tuner_id``),
:func:`run_search` (every process), :func:`finalize` (final fit, test score, report, export; chief only).
TensorFlow is imported only after the configuration is valid.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.config import PRESETS, ConfigError, JobConfig, load_config, set_overrides, to_yaml
from jobs.distributed import DistributedError, Role, RoleError, resolve_role

if TYPE_CHECKING:
    import keras_tuner as kt

    from jobs.data import Mnist, Splits
    from jobs.progress import SearchProgress

log = logging.getLogger("jobs.tune")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_SEARCH = 4
EXIT_EXPORT = 5
EXIT_INTERRUPTED = 130

TUNER_DIR = "tuner"  # <output>/tuner: Keras Tuner's project (resume state)
MODELS_DIR = "models"  # <output>/models: the model repository
REPORT_DIR = "report"


class SearchError(Exception):
    """The search cannot go on (fatal Keras Tuner error, too many failed trials, nothing scored)."""


class ExportError(Exception):
    """The final model could not be published to the model repository."""


@dataclass
class FinalResult:
    version: int
    path: Path
    test_accuracy: float
    val_accuracy: float | None
    hyperparameters: dict[str, Any]
    trials: int
    model: Any = None  # the exported keras.Model, in memory


def output_paths(config: JobConfig) -> dict[str, Path]:
    root = Path(config.output.dir)
    return {
        "root": root,
        "tuner": root / TUNER_DIR,
        "models": root / MODELS_DIR,
        "report": root / REPORT_DIR,
    }


def setup_runtime(config: JobConfig) -> None:
    """Seeds, GPU memory growth and the precision policy; works the same without a GPU."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if config.runtime.gpu_memory_growth:
            tf.config.experimental.set_memory_growth(gpu, True)
    if config.runtime.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
        if not gpus:
            log.warning("mixed precision is on but TensorFlow sees no GPU: training will be slower")
    log.info("devices: %d GPU(s); precision policy %s", len(gpus), keras.mixed_precision.global_policy().name)


def load_data(config: JobConfig) -> tuple[Mnist, Splits]:
    """MNIST and its splits (raises :class:`jobs.data.DataError`)."""
    from jobs import data

    mnist = data.load_mnist(config.data.dir, config.data.cache_dir)
    splits = data.split(mnist, config.data.validation_size, config.seed)
    if config.search.train_subset is not None and config.search.train_subset > len(splits.x_train):
        raise data.DataError(
            f"{mnist.source}: search.train_subset {config.search.train_subset} exceeds the "
            f"{len(splits.x_train)} training examples"
        )
    log.info(
        "data from %s: %d train (%s used by trials), %d validation, %d test",
        mnist.source,
        len(splits.x_train),
        config.search.train_subset or "all",
        len(splits.x_val),
        len(splits.x_test),
    )
    return mnist, splits


def build_tuner(
    config: JobConfig,
    splits: Splits,
    tuner_id: str | None = None,
    progress: SearchProgress | None = None,
) -> kt.Tuner:
    """The configured tuner on ``<output>/tuner``; reloads (resumes) the project if it exists.

    Keras Tuner picks the state file to reload by ``KERASTUNER_TUNER_ID`` (default ``tuner0``), so a
    ``tuner_id`` given here is also exported there when that variable is unset.
    """
    from jobs import tuners
    from jobs.search_space import MlpHyperModel

    if tuner_id and "KERASTUNER_TUNER_ID" not in os.environ:
        os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    train_size = len(splits.subset(config.search.train_subset)[0])
    hypermodel = MlpHyperModel(
        config.space, train_size, config.search.epochs, config.runtime.steps_per_execution
    )
    paths = output_paths(config)
    paths["root"].mkdir(parents=True, exist_ok=True)
    try:
        tuner = tuners.create_tuner(config, hypermodel, paths["root"], TUNER_DIR, tuner_id)
    except (ValueError, RuntimeError) as exc:
        raise SearchError(f"cannot create or reload the tuner in {paths['tuner']}: {exc}") from exc
    if progress is not None:
        tuner.progress = progress
        progress.resume(*tuners.finished_work(tuner))
    return tuner


def run_search(tuner: kt.Tuner, config: JobConfig, splits: Splits) -> float:
    """Run (or continue) the search; returns its wall time. Raises :class:`SearchError` if fatal."""
    import keras
    import keras_tuner as kt

    from jobs.progress import interactive

    x, y = splits.subset(config.search.train_subset)
    tuner.hypermodel.verbose = 1 if interactive() else 0
    callbacks: list[keras.callbacks.Callback] = []
    if config.search.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=config.tuner.objective, patience=config.search.early_stopping_patience
            )
        )
    if config.runtime.tensorboard:
        # Keras Tuner gives each trial its own subdirectory and adds the HParams callback.
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(output_paths(config)["report"] / "tensorboard"),
                write_graph=False,
                profile_batch=0,
            )
        )
    started = time.monotonic()
    try:
        tuner.search(
            x,
            y,
            validation_data=(splits.x_val, splits.y_val),
            epochs=config.search.epochs,
            callbacks=callbacks,
            # Keras Tuner's own display is off (it prints, and loses its state on a resume): our log
            # lines replace it. Keras' progress bar is on for a terminal (MlpHyperModel.verbose).
            verbose=0,
        )
    except kt.errors.FatalError as exc:
        raise SearchError(f"fatal error in the search: {exc}") from exc
    except RuntimeError as exc:  # Keras Tuner's "consecutive failures exceeded the limit"
        raise SearchError(str(exc)) from exc
    seconds = time.monotonic() - started
    log.info("search finished in %.1fs", seconds)
    return seconds


def finalize(
    tuner: kt.Tuner,
    config: JobConfig,
    splits: Splits,
    mnist: Mnist,
    *,
    search_seconds: float | None = None,
    started: float | None = None,
    progress: SearchProgress | None = None,
) -> FinalResult:
    """Final model, test score, report and atomic export of the next version."""
    import modelrepo
    from jobs import report, tuners
    from jobs.export import export_model
    from jobs.final import final_model, library_versions, score_on_test

    paths = output_paths(config)
    chosen = final_model(tuner, config, splits, progress)
    accuracy = score_on_test(chosen["model"], splits)
    log.info("test accuracy %.4f (%s)", accuracy, config.final.mode)
    trials = tuners.trial_summaries(tuner, config.tuner.objective)
    report.write_report(
        paths["report"],
        trials,
        config.tuner.objective,
        trial_history=chosen["trial_history"],
        final_history=chosen["history"] if config.final.mode == "retrain" else None,
        title=f"{config.preset}: trial {chosen['best_trial']}, final {config.final.mode}, "
        f"test accuracy {accuracy:.4f}",
        tensorboard=config.runtime.tensorboard,
        trial_epochs=chosen["trial_epochs"],
    )
    metadata = modelrepo.ModelMetadata(
        model_name=config.output.model_name,
        tuner=config.tuner.kind,
        final_model=config.final.mode,
        final_model_note=chosen["note"],
        hyperparameters=modelrepo.to_jsonable(chosen["values"]),
        val_accuracy=chosen["val_accuracy"],
        test_accuracy=accuracy,
        history=chosen["history"],
        trials=trials,
        data_checksums=mnist.checksums,
        library_versions=library_versions(),
        config=config.model_dump(mode="json"),
        search_seconds=search_seconds,
        total_seconds=None if started is None else time.monotonic() - started,
    )
    try:
        version, path = export_model(chosen["model"], paths["models"], metadata)
    except Exception as exc:  # any failure here means "no new version"; publish() cleaned up
        raise ExportError(f"export to {paths['models']} failed: {exc}") from exc
    return FinalResult(
        version, path, accuracy, chosen["val_accuracy"], chosen["values"], len(trials), chosen["model"]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.tune",
        description=(
            "Tune an MLP for MNIST with Keras Tuner, export the best model as a versioned SavedModel "
            "under OUTPUT/models and write a report under OUTPUT/report. Rerunning the same command "
            "continues an interrupted search (state in OUTPUT/tuner). Precedence: preset < --config < "
            "environment (TUNE_PRESET, TUNE_CONFIG, TUNE_OUTPUT, MNIST_DATA_DIR, TUNE_DATA_CACHE, "
            "TUNE_PUSHGATEWAY, TUNE_<SECTION>__<FIELD>) < flags. See docs/tuning.md."
        ),
        epilog="exit codes: 0 done, 2 bad config, 3 data error, 4 fatal search error, 5 export error, "
        "6 distributed: chief unreachable or a wait timed out, 130 interrupted",
    )
    parser.add_argument("--preset", choices=PRESETS, help="starting configuration (default: default)")
    parser.add_argument("--config", help="YAML file merged over the preset")
    parser.add_argument("--data-dir", help="MNIST directory (four IDX files, gzipped or not) or mnist.npz")
    parser.add_argument("--data-cache", help="Keras download cache when no data directory is given")
    parser.add_argument("--output", help="output folder (models/, tuner/, report/)")
    parser.add_argument("--model-name", help="model name in the repository (default mnist)")
    parser.add_argument("--tuner", choices=("random", "hyperband", "bayesian"), help="tuner.kind")
    parser.add_argument("--max-trials", type=int, help="tuner.max_trials (random, bayesian)")
    parser.add_argument("--epochs", type=int, help="search.epochs: epochs per trial (random, bayesian)")
    parser.add_argument("--final-mode", choices=("retrain", "best_trial"), help="final.mode")
    parser.add_argument("--final-epochs", help="final.epochs: 'best' or a number")
    parser.add_argument("--seed", type=int, help="seed of the split, the search and the weights")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="any config field, value in YAML (repeatable), e.g. --set 'space.translate_pixels=[0,2]'",
    )
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        ("data", "dir"): args.data_dir,
        ("data", "cache_dir"): args.data_cache,
        ("output", "dir"): args.output,
        ("output", "model_name"): args.model_name,
        ("tuner", "kind"): args.tuner,
        ("tuner", "max_trials"): args.max_trials,
        ("search", "epochs"): args.epochs,
        ("final", "mode"): args.final_mode,
        ("final", "epochs"): (
            int(args.final_epochs) if args.final_epochs and args.final_epochs.isdigit() else args.final_epochs
        ),
        ("seed",): args.seed,
    }
    result = set_overrides(args.set)
    for path, value in flags.items():
        if value is None:
            continue
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return result


def run(config: JobConfig, tuner_id: str | None = None) -> FinalResult:
    """The whole job in one process: data, search, final model, report, export."""
    from jobs.progress import SearchProgress
    from jobs.pushmetrics import ProgressPusher, ProgressWatcher

    started = time.monotonic()
    setup_runtime(config)
    mnist, splits = load_data(config)
    pusher = ProgressPusher(config.runtime.pushgateway)
    progress = SearchProgress(config)
    tuner = build_tuner(config, splits, tuner_id, progress)
    with ProgressWatcher(tuner.oracle, pusher, "val_accuracy"):
        search_seconds = run_search(tuner, config, splits)
    result = finalize(
        tuner, config, splits, mnist, search_seconds=search_seconds, started=started, progress=progress
    )
    pusher.success()
    return result


def run_role(config: JobConfig, role: Role) -> FinalResult | None:
    """Chief or worker of a distributed search (docs/distributed.md); None if this process exports nothing."""
    from jobs import distributed_run
    from jobs.distributed import apply_role
    from jobs.progress import SearchProgress
    from jobs.pushmetrics import ProgressPusher

    apply_role(role)  # Keras Tuner reads KERASTUNER_* when the tuner is built
    started = time.monotonic()
    setup_runtime(config)
    mnist, splits = load_data(config)
    progress = SearchProgress(config)
    if role.kind == "worker":
        # A worker's oracle lives on the chief: no resume accounting here, only per-epoch logging.
        tuner = build_tuner(config, splits, role.tuner_id)
        tuner.progress = progress
        distributed_run.run_worker(tuner, lambda: run_search(tuner, config, splits), role, config.distributed)
        return None
    tuner = build_tuner(config, splits, role.tuner_id, progress)

    def final() -> FinalResult:
        search_seconds = time.monotonic() - started
        return finalize(
            tuner, config, splits, mnist, search_seconds=search_seconds, started=started, progress=progress
        )

    pusher = ProgressPusher(config.runtime.pushgateway)
    try:
        return distributed_run.run_chief(tuner, final, role, config.distributed, pusher)
    except RuntimeError as exc:  # Keras Tuner's "consecutive failures exceeded the limit", on the chief
        raise SearchError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.preset, args.config, os.environ, cli_overrides(args))
        role = resolve_role(os.environ, config.distributed)
    except (ConfigError, RoleError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    if args.print_config:
        sys.stdout.write(to_yaml(config))
        return EXIT_OK
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jobs.data import DataError

    log.info("preset %s, output %s", config.preset, config.output.dir)
    try:
        result = run_role(config, role) if role.distributed else run(config)
    except DistributedError as exc:
        log.error("distributed search (%s %s): %s", role.kind, role.tuner_id, exc)
        return exc.exit_code
    except (DataError, SearchError, ExportError) as exc:
        kind = {DataError: ("data error", EXIT_DATA), SearchError: ("search failed", EXIT_SEARCH)}
        label, code = kind.get(type(exc), ("export failed", EXIT_EXPORT))
        log.error("%s: %s", label, exc)
        return code
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to continue the search")
        return EXIT_INTERRUPTED
    if result is None:  # a worker, or a chief whose Job had already exported
        log.info("done: %s %s", role.kind, role.tuner_id)
    else:
        log.info(
            "done: version %d at %s, test accuracy %.4f, %d trials",
            result.version,
            result.path,
            result.test_accuracy,
            result.trials,
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
