"""Shared test setup: quiet TensorFlow, fixed seeds, a fresh Keras session per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    yield
    import sys

    if "keras" in sys.modules:  # only pay for the import in tests that used Keras
        sys.modules["keras"].backend.clear_session()
