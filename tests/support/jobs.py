"""Tiny job configs for the tuning-job tests: searches of a few seconds on the synthetic data."""

from __future__ import annotations

from pathlib import Path

import yaml


def tiny_config(output: Path, data_dir: Path, **sections: dict) -> dict:
    """A config mapping for a search of a few seconds on the synthetic data."""
    config = {
        "seed": 3,
        "tuner": {"kind": "random", "max_trials": 2},
        "search": {"epochs": 2, "train_subset": None},
        "space": {
            "num_layers": {"min": 1, "max": 2},
            "units": {"min": 16, "max": 32, "step": 16},
            "dropout": [0.0, 0.1],
            "learning_rate": {"min": 3e-3, "max": 1e-2, "sampling": "log"},
            "batch_size": [64],
            "lr_schedule": ["constant", "cosine"],
            "translate_pixels": [0, 1],
        },
        "data": {"dir": str(data_dir), "validation_size": 200},
        "final": {"mode": "retrain", "epochs": "best"},
        "output": {"dir": str(output)},
        "runtime": {"tensorboard": True},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path
