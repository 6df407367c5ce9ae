"""The tuning job's command line: arguments, logging, and the one place errors become exit codes
(TensorFlow is imported only after the configuration is valid)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from jobs import logs
from jobs.config import PRESETS, job_environment, load_config, to_yaml
from jobs.distributed.roles import resolve_role
from jobs.errors import EXIT_INTERRUPTED, EXIT_OK, JobError, describe_exit_codes

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.tune",
        description=(
            "Tune an MLP for MNIST with Keras Tuner, export the best model as a versioned SavedModel "
            "under OUTPUT/models and write a report under OUTPUT/report. Rerunning the same command "
            "continues an interrupted search (state in OUTPUT/tuner); once the search has exported, a "
            "rerun publishes nothing (see --export-again). Data: --data-dir, else MNIST_DATA_DIR, else "
            "a Keras download. Precedence: preset < --config < environment (TUNE_PRESET, TUNE_CONFIG, "
            "TUNE_OUTPUT, MNIST_DATA_DIR, TUNE_DATA_CACHE, TUNE_PUSHGATEWAY, TUNE_<SECTION>__<FIELD>) "
            "< flags. See docs/tuning.md."
        ),
        epilog=describe_exit_codes(),
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
    parser.add_argument(
        "--export-again",
        action="store_true",
        help="publish a new version even though this search already exported one (final fit and export "
        "run again; the search itself does not). Also TUNE_EXPORT_AGAIN=1, for compose; never set it in a "
        "Job spec, where a retried pod would publish again",
    )
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The named flags as config paths (None: not given); ``--set`` items are separate (YAML values)."""
    final_epochs = args.final_epochs
    return {
        "data.dir": args.data_dir,
        "data.cache_dir": args.data_cache,
        "output.dir": args.output,
        "output.model_name": args.model_name,
        "tuner.kind": args.tuner,
        "tuner.max_trials": args.max_trials,
        "search.epochs": args.epochs,
        "final.mode": args.final_mode,
        "final.epochs": int(final_epochs) if final_epochs and final_epochs.isdigit() else final_epochs,
        "seed": args.seed,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the job; every :class:`jobs.errors.JobError` becomes one log line and its exit code."""
    args = parse_args(argv)
    logs.setup(args.log_level)
    role = None
    try:
        config = load_config(
            args.preset, args.config, os.environ, flags=flag_overrides(args), set_flags=args.set
        )
        role = resolve_role(os.environ, config.distributed)
        export_again = args.export_again or job_environment(os.environ).export_again
        if args.print_config:
            sys.stdout.write(to_yaml(config))
            return EXIT_OK
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from jobs import pipeline

        log.info("preset %s, output %s", config.preset, config.output.dir)
        if role.distributed:
            result = pipeline.run_role(config, role, export_again=export_again)
        else:
            result = pipeline.run(config, export_again=export_again)
    except JobError as exc:
        where = f" ({role.kind} {role.tuner_id})" if role is not None and role.distributed else ""
        log.error("%s%s: %s", exc.label, where, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to continue the search")
        return EXIT_INTERRUPTED
    if result is None:  # a worker, or a search that had already exported
        log.info("done: %s", f"{role.kind} {role.tuner_id}" if role.distributed else "nothing new to export")
    else:
        log.info(
            "done: version %d at %s, test accuracy %.4f, %d trials",
            result.version,
            result.path,
            result.test_accuracy,
            result.trials,
        )
    return EXIT_OK
