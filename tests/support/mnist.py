"""Small synthetic MNIST for tests: ten noisy prototypes, one per digit, learnable in an epoch or two."""

from __future__ import annotations

import numpy as np


def synthetic_arrays(train: int, test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 images [n, 28, 28] and labels 0..9 under the names ``jobs.data.write_idx`` expects."""
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
