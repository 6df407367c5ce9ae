"""Fixtures for the tuning-job tests: a small synthetic MNIST written as real IDX files, and tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from jobs import data


def synthetic_arrays(train: int, test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Ten noisy prototypes (one per digit): learnable in a few epochs, unlike random noise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, 28, 28)) < 0.25

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        images = prototypes[labels] ^ (rng.random((count, 28, 28)) < 0.08)
        return (images * 255).astype(np.uint8), labels.astype(np.uint8)

    x_train, y_train = make(train)
    x_test, y_test = make(test)
    return {"train_images": x_train, "train_labels": y_train, "test_images": x_test, "test_labels": y_test}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,200 training and 300 test images as gzipped IDX files."""
    directory = tmp_path_factory.mktemp("mnist-synthetic")
    data.write_idx(directory, synthetic_arrays(1200, 300), compress=True)
    return directory


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
