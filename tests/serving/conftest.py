"""Fixtures for the serving tests: small SavedModels exported by the job's own code, real servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.settings import Settings
from tests.support.mnist import synthetic_arrays
from tests.support.serving import ServerThread, build_model, metadata, publish_copy, wait_serving


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small learnable MNIST look-alike (``tests/support/mnist.py``) as real gzipped IDX files."""
    from tests.support.mnist import write_idx

    directory = tmp_path_factory.mktemp("digits")
    write_idx(directory, synthetic_arrays(3000, 200), compress=True)
    return directory


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> dict[str, Path]:
    """Two exported versions: ``trained`` (fitted on 3000 synthetic digits), ``random`` (random weights)."""
    from jobs.export import export_model
    from serving.client import read_idx

    root = tmp_path_factory.mktemp("exported")
    images = read_idx(digits_dir / "train-images-idx3-ubyte.gz").astype(np.float32)
    labels = read_idx(digits_dir / "train-labels-idx1-ubyte.gz")
    trained = build_model(seed=1)
    trained.fit(images, labels, epochs=3, batch_size=64, verbose=0)
    _, trained_path = export_model(trained, root / "trained", metadata(val_accuracy=0.88))
    _, random_path = export_model(build_model(seed=2), root / "random", metadata(val_accuracy=0.1))
    return {"trained": trained_path, "random": random_path}


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """``start_server(model_root=..., **settings)`` -> a started ServerThread (stopped at teardown)."""
    started: list[ServerThread] = []

    def start(**overrides) -> ServerThread:
        values = {
            "model_root": tmp_path / "models",
            "host": "127.0.0.1",
            "port": 0,
            "http_port": 0,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "poll_interval_seconds": 0.2,
            **overrides,
        }
        server = ServerThread(Settings(**values))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def served(start_server, exported, tmp_path: Path) -> ServerThread:
    """A server over a repository holding the trained model as mnist version 1, already SERVING."""
    root = tmp_path / "models"
    publish_copy(exported["trained"], root)
    server = start_server(model_root=root)
    wait_serving(server.target)
    return server


@pytest.fixture(scope="session")
def test_images(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic test split: 200 uint8 images [200, 28, 28] and their labels."""
    from serving.client import read_idx

    return read_idx(digits_dir / "t10k-images-idx3-ubyte.gz"), read_idx(
        digits_dir / "t10k-labels-idx1-ubyte.gz"
    )
