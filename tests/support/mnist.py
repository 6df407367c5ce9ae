"""Small synthetic MNIST for tests: ten noisy prototypes, one per digit, learnable in an epoch or two, and
the IDX writer that puts them on disk as the official files are."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from jobs.data import COLS, IDX_FILES, IMAGE_MAGIC, LABEL_MAGIC, ROWS


def synthetic_arrays(train: int, test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 images [n, 28, 28] and labels 0..9 under the names :func:`write_idx` expects."""
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


def write_idx(directory: Path, mnist_arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    """Write arrays as the four IDX files (gzipped with ``compress``), in the layout ``jobs.data`` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        array = np.ascontiguousarray(mnist_arrays[key], dtype=np.uint8)
        if key.endswith("images"):
            header = struct.pack(">IIII", IMAGE_MAGIC, array.shape[0], ROWS, COLS)
        else:
            header = struct.pack(">II", LABEL_MAGIC, array.shape[0])
        payload = header + array.tobytes()
        if compress:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)
