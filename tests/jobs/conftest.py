"""Fixtures for the tuning-job tests: a small synthetic MNIST written as real IDX files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mnist import synthetic_arrays, write_idx


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,200 training and 300 test images as gzipped IDX files."""
    directory = tmp_path_factory.mktemp("mnist-synthetic")
    write_idx(directory, synthetic_arrays(1200, 300), compress=True)
    return directory
