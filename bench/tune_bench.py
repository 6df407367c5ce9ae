"""Benchmark of the tuning job on the official MNIST: presets side by side, and the harness overhead.

    .venv/bin/python bench/tune_bench.py --data-dir ../shared/datasets/mnist --seeds 0,1,2 --skip-overhead
    .venv/bin/python bench/tune_bench.py --data-dir ../shared/datasets/mnist            # seed 42, + overhead
    .venv/bin/python bench/tune_bench.py --data-dir ../shared/datasets/mnist --smoke    # a quick start check

Per seed and preset (each a fresh ``python -m jobs.tune --seed S`` process, so import time counts as it
does for a user; the presets of one seed run back to back): wall time, trials, best validation accuracy,
test accuracy of the exported model. For ``default``, what the search adds: the configuration of its
median-ranked trial (by validation accuracy) retrained exactly as the winner was (``jobs.final.retrain``:
same epochs, train+validation) and scored on the same test set. Then, unless skipped, the harness
overhead: one fixed configuration trained for the same epochs by the job's search (Keras Tuner,
per-epoch checkpoints, TensorBoard, history files) and by a plain ``model.fit``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import modelrepo  # noqa: E402

log = logging.getLogger("bench.tune")

# A fixed MLP for the overhead comparison (every hyperparameter fixed: a one-trial "search").
FIXED_SPACE = {
    "num_layers": 2,
    "units": 512,
    "dropout": 0.2,
    "learning_rate": 1e-3,
    "batch_size": 128,
    "lr_schedule": "constant",
    "translate_pixels": 0,
    "label_smoothing": 0.0,
}


def run_preset(preset: str, data_dir: str, output: Path, seed: int | None = None) -> dict:
    """One job process on ``preset`` (``--seed`` if given); its wall time and what it exported."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.tune",
            "--preset",
            preset,
            "--data-dir",
            data_dir,
            "--output",
            str(output),
            *(["--seed", str(seed)] if seed is not None else []),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        raise SystemExit(f"preset {preset} failed with exit code {result.returncode}")
    version = modelrepo.list_versions(output / "models", "mnist")[-1]
    metadata = modelrepo.read_metadata(output / "models" / "mnist" / str(version))
    scored = [t.val_accuracy for t in metadata.trials if t.val_accuracy is not None]
    return {
        "preset": preset,
        "seed": seed,
        "output": str(output),
        "wall_seconds": wall,
        "search_seconds": metadata.search_seconds,
        "trials": len(metadata.trials),
        "best_val_accuracy": max(scored) if scored else None,
        "test_accuracy": metadata.test_accuracy,
        "final_model": metadata.final_model,
    }


def median_trial_retrain(preset: str, data_dir: str, output: Path, seed: int | None) -> dict:
    """Retrain the median-ranked trial of a finished run the way its winner was retrained; its test score."""
    from jobs import config as cfg
    from jobs.data import load_data
    from jobs.final import retrain, score_on_test
    from jobs.runtime import setup_runtime
    from jobs.search_space import model_values

    version = modelrepo.list_versions(output / "models", "mnist")[-1]
    metadata = modelrepo.read_metadata(output / "models" / "mnist" / str(version))
    ranked = sorted(
        (t for t in metadata.trials if t.status == "COMPLETED" and t.val_accuracy is not None),
        key=lambda t: t.val_accuracy,
        reverse=True,
    )
    median = ranked[len(ranked) // 2]  # of 3 trials the 2nd best, of 4 the 3rd
    overrides: dict = {"data": {"dir": data_dir}, "output": {"dir": str(output / "median")}}
    if seed is not None:
        overrides["seed"] = seed
    config = cfg.load_config(preset, environ={}, cli=overrides)
    if config.final.mode != "retrain" or config.final.epochs == "best":
        raise SystemExit(f"preset {preset}: the median-trial retrain needs final.mode retrain, fixed epochs")
    setup_runtime(config)
    _, splits = load_data(config)
    started = time.monotonic()
    model, _ = retrain(
        model_values(median.hyperparameters),
        int(config.final.epochs),
        splits,
        steps_per_execution=config.runtime.steps_per_execution,
        jit_compile=config.runtime.jit_compile,
    )
    seconds = time.monotonic() - started
    return {
        "trial_id": median.trial_id,
        "rank": len(ranked) // 2 + 1,
        "of": len(ranked),
        "val_accuracy": median.val_accuracy,
        "hyperparameters": model_values(median.hyperparameters),
        "retrain_seconds": seconds,
        "test_accuracy": score_on_test(model, splits),
    }


def overhead(data_dir: str, epochs: int, output: Path, steps_per_execution: int | None = None) -> dict:
    """Seconds for ``epochs`` of one fixed MLP: the job's search step vs a plain ``model.fit``."""
    import keras
    import numpy as np

    from jobs import config as cfg
    from jobs import kt_compat
    from jobs.data import load_data
    from jobs.runtime import output_paths, setup_runtime
    from jobs.search import build_tuner, run_search

    overrides = {
        "tuner": {"kind": "random", "max_trials": 1},
        "search": {"epochs": epochs, "early_stopping_patience": None, "train_subset": None},
        "space": FIXED_SPACE,
        "data": {"dir": data_dir},
        "final": {"mode": "best_trial"},
        "output": {"dir": str(output)},
    }
    if steps_per_execution is not None:
        overrides["runtime"] = {"steps_per_execution": steps_per_execution}
    config = cfg.load_config("seed", environ={}, cli=overrides)
    setup_runtime(config)
    _, splits = load_data(config)

    # Plain Keras: the same layers, sparse labels, nothing around fit().
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input((28, 28))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    for _ in range(FIXED_SPACE["num_layers"]):
        x = keras.layers.Dropout(FIXED_SPACE["dropout"])(keras.layers.Dense(FIXED_SPACE["units"], "relu")(x))
    plain = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    plain.compile(
        optimizer=keras.optimizers.Adam(FIXED_SPACE["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Warm-up (thread pools, oneDNN kernels) on a throwaway copy, so neither timed run pays for it.
    warm = keras.models.clone_model(plain)
    warm.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    warm.fit(splits.x_train[:4096], splits.y_train[:4096], batch_size=FIXED_SPACE["batch_size"], verbose=0)
    started = time.monotonic()
    history = plain.fit(
        splits.x_train,
        splits.y_train,
        batch_size=FIXED_SPACE["batch_size"],
        epochs=epochs,
        validation_data=(splits.x_val, splits.y_val),
        verbose=0,
    )
    plain_seconds = time.monotonic() - started

    paths = output_paths(config)
    logs = paths.report / "tensorboard" if config.runtime.tensorboard else None
    with kt_compat.patched():  # as the job runs (atomic state writes)
        tuner = build_tuner(config, splits, paths)
        job_seconds = run_search(tuner, config, splits, logs)
    trial = tuner.oracle.get_best_trials(1)[0]
    return {
        "epochs": epochs,
        "job_steps_per_execution": config.runtime.steps_per_execution,
        "plain_fit_seconds": plain_seconds,
        "job_search_seconds": job_seconds,
        "overhead_percent": 100.0 * (job_seconds - plain_seconds) / plain_seconds,
        "plain_val_accuracy": float(np.max(history.history["val_accuracy"])),
        "job_val_accuracy": float(trial.score),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"), help="official MNIST files")
    parser.add_argument(
        "--presets", default="seed,default", help="comma-separated presets (default seed,default)"
    )
    parser.add_argument(
        "--seeds", help="comma-separated seeds, each run on every preset (default: the presets' own seed)"
    )
    parser.add_argument(
        "--skip-median", action="store_true", help="skip the median-trial retrain of the default preset"
    )
    parser.add_argument("--overhead-epochs", type=int, default=10, help="epochs of the overhead comparison")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--job-steps-per-execution",
        type=int,
        help="runtime.steps_per_execution of the job's side (default: config)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="quick check: preset smoke, 1-epoch overhead run"
    )
    parser.add_argument("--output", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.data_dir:
        parser.error("--data-dir (or MNIST_DATA_DIR) is required")
    presets = ["smoke"] if args.smoke else [p.strip() for p in args.presets.split(",") if p.strip()]
    seeds: list[int | None] = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    epochs = 1 if args.smoke else args.overhead_epochs
    root = Path(args.output or tempfile.mkdtemp(prefix="tune-bench-"))
    figures: dict = {"presets": [], "median_trial": [], "overhead": None, "cpu_count": os.cpu_count()}

    print(
        f"{'seed':>4} {'preset':<8} {'wall s':>8} {'search s':>9} {'trials':>6} {'best val':>9} "
        f"{'test acc':>9}  final"
    )
    for seed in seeds:
        rows = {}
        for preset in presets:
            tag = preset if seed is None else f"{preset}-seed{seed}"
            row = rows[preset] = run_preset(preset, args.data_dir, root / tag, seed)
            figures["presets"].append(row)
            print(
                f"{'-' if seed is None else seed:>4} {row['preset']:<8} {row['wall_seconds']:>8.1f} "
                f"{row['search_seconds']:>9.1f} {row['trials']:>6d} {row['best_val_accuracy']:>9.4f} "
                f"{row['test_accuracy']:>9.4f}  {row['final_model']}",
                flush=True,
            )
        if "seed" in rows and "default" in rows:
            ratio = rows["default"]["wall_seconds"] / rows["seed"]["wall_seconds"]
            print(f"     default/seed wall time {ratio:.2f} ({'met' if ratio <= 1 else 'NOT met'}: <= 1)")
        if "default" in rows and not args.skip_median:
            median = median_trial_retrain("default", args.data_dir, Path(rows["default"]["output"]), seed)
            median["seed"] = seed
            figures["median_trial"].append(median)
            print(
                f"     default's median trial ({median['trial_id']}, rank {median['rank']} of "
                f"{median['of']}, val {median['val_accuracy']:.4f}) retrained the same way: test "
                f"{median['test_accuracy']:.4f} vs the winner's {rows['default']['test_accuracy']:.4f} "
                f"({median['retrain_seconds']:.0f} s)",
                flush=True,
            )
    default_rows = [row for row in figures["presets"] if row["preset"] == "default"]
    if len(default_rows) > 1:
        accuracies = [row["test_accuracy"] for row in default_rows]
        mean = sum(accuracies) / len(accuracies)
        print(
            f"\ndefault over {len(accuracies)} seeds: mean test accuracy {mean:.4f}"
            f" (target >= 0.9930), lowest {min(accuracies):.4f} (target >= 0.9920)"
        )
    if not args.skip_overhead:
        result = overhead(args.data_dir, epochs, root / "overhead", args.job_steps_per_execution)
        figures["overhead"] = result
        print(
            f"\nharness overhead, one fixed 2x512 MLP, {result['epochs']} epochs on the training split: "
            f"plain model.fit {result['plain_fit_seconds']:.1f}s, "
            f"job search {result['job_search_seconds']:.1f}s "
            f"(steps_per_execution {result['job_steps_per_execution']}) "
            f"-> {result['overhead_percent']:+.1f}% (val accuracy {result['plain_val_accuracy']:.4f} vs "
            f"{result['job_val_accuracy']:.4f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"\nruns under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
