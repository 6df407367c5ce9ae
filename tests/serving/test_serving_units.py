"""Pieces checked without a network: generated code is current, settings precedence, the batcher."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from serving.batcher import Batcher
from serving.errors import InvalidInput, Overloaded
from serving.metrics import ServingMetrics
from serving.model_store import load_version
from serving.settings import Settings, parse_settings
from serving.v2 import images_from_array
from serving.validation import check_range
from tests.support import REPO


def test_committed_generated_code_matches_the_proto(tmp_path):
    subprocess.run([sys.executable, str(REPO / "protos/generate.py"), "--out", str(tmp_path)], check=True)
    generated = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*.py"))
    assert generated == [
        Path("digits/inference/grpc_predict_v2_pb2.py"),
        Path("digits/inference/grpc_predict_v2_pb2_grpc.py"),
        Path("digits/v1/digits_pb2.py"),
        Path("digits/v1/digits_pb2_grpc.py"),
    ]
    for relative in generated:
        assert (tmp_path / relative).read_text() == (REPO / relative).read_text(), (
            f"{relative} is stale: run python protos/generate.py"
        )


def test_range_checks_name_what_is_wrong():
    pixels = np.full((1, 28, 28), 7.0, np.float32)
    assert check_range(pixels, "x") is pixels
    for bad, message in (
        (np.nan, "x contains NaN or infinite values"),
        (np.inf, "x contains NaN or infinite values"),
        (-np.inf, "x contains NaN or infinite values"),
        (255.5, r"x has values in \[7, 255.5\]; pixels must be raw values in \[0, 255\]"),
        (-1.0, r"x has values in \[-1, 7\]"),
    ):
        pixels[0, 3, 4] = bad
        with pytest.raises(InvalidInput, match=message):
            check_range(pixels, "x")
        pixels[0, 3, 4] = 7.0
    whole = np.arange(784) % 256
    assert images_from_array(whole, "UINT8", 1, "d").dtype == np.float32
    for bad, message in (
        (256, "outside 0..255"),
        (-1, "outside 0..255"),
        (0.5, "fractional"),
        (np.nan, "fractional"),
    ):
        values = whole.astype(np.float64)
        values[5] = bad
        with pytest.raises(InvalidInput, match=message):
            images_from_array(values, "UINT8", 1, "d")
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        images_from_array(np.full(784, np.inf), "FP32", 1, "d")


def test_flags_override_environment_which_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITS_MODEL_ROOT", str(tmp_path))
    monkeypatch.setenv("DIGITS_PORT", "9001")
    monkeypatch.setenv("DIGITS_MAX_BATCH_SIZE", "64")
    settings = parse_settings(["--port", "9002", "--max-queue-delay-us", "500"])
    assert (settings.model_root, settings.port, settings.max_batch_size) == (tmp_path, 9002, 64)
    assert settings.max_queue_delay_us == 500 and settings.metrics_port == 8000


def test_bad_settings_name_the_problem(tmp_path):
    with pytest.raises(ValidationError, match="tls_cert and tls_key"):
        Settings(model_root=tmp_path, tls_cert=tmp_path / "cert.pem")
    with pytest.raises(ValidationError, match="max_message_bytes"):
        Settings(model_root=tmp_path, max_message_bytes=1024 * 1024)
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings(model_root=tmp_path, max_batch_size=0)
    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "--port", "1"],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "model_root" in result.stderr and "Field required" in result.stderr


@pytest.fixture(scope="module")
def model(exported):
    return load_version("mnist", 1, exported["trained"])


def _run_batcher(model, requests: list[np.ndarray], **options) -> tuple[list, ServingMetrics]:
    metrics = ServingMetrics()

    async def main():
        batcher = Batcher(metrics, **options)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(model, images) for images in requests))
        finally:
            await batcher.close()

    return asyncio.run(main()), metrics


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_concurrent_requests_share_model_calls_and_get_their_own_rows(model, threads):
    rng = np.random.default_rng(0)
    requests = [rng.integers(0, 256, (n, 28, 28)).astype(np.float32) for n in [1, 3, 1, 2] * 10]
    results, metrics = _run_batcher(model, requests, max_batch_size=8, threads=threads)
    for images, (probabilities, classes) in zip(requests, results, strict=True):
        expected_probabilities, expected_classes = model.predict(images)
        np.testing.assert_allclose(probabilities, expected_probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(classes, expected_classes)
    calls = metrics.registry.get_sample_value("digits_batch_size_count")
    assert calls < len(requests)  # merged
    assert metrics.registry.get_sample_value("digits_batch_size_bucket", {"le": "8.0"}) == calls  # never > 8
    assert metrics.registry.get_sample_value("digits_batch_size_sum") == sum(len(r) for r in requests)


async def _submit_staggered(batcher: Batcher, model, count: int, gap: float) -> list[asyncio.Task]:
    """``count`` single-image requests, ``gap`` seconds apart; returns their tasks (not awaited)."""
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(batcher.predict(model, np.zeros((1, 28, 28), np.float32))))
        await asyncio.sleep(gap)
    return tasks


def test_queue_delay_gathers_staggered_requests_into_one_call(model):
    metrics = ServingMetrics()

    async def main():
        batcher = Batcher(metrics, max_batch_size=64, max_queue_delay=0.3)
        batcher.start()
        await asyncio.gather(*await _submit_staggered(batcher, model, count=3, gap=0.02))
        await batcher.close()

    asyncio.run(main())
    assert metrics.registry.get_sample_value("digits_batch_size_count") == 1
    assert metrics.registry.get_sample_value("digits_queue_wait_seconds_sum") > 0.3 * 3 - 0.1


def test_a_full_batch_ends_the_queue_delay_early(model):
    metrics = ServingMetrics()

    async def main():
        batcher = Batcher(metrics, max_batch_size=4, max_queue_delay=30.0)
        batcher.start()
        tasks = await _submit_staggered(batcher, model, count=4, gap=0.01)  # the fourth fills the batch
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        await batcher.close()

    asyncio.run(main())
    assert metrics.registry.get_sample_value("digits_batch_size_count") == 1
    assert metrics.registry.get_sample_value("digits_batch_size_sum") == 4


def test_busy_delay_is_paid_only_under_concurrent_traffic(model):
    metrics = ServingMetrics()
    one = np.zeros((1, 28, 28), np.float32)

    def waited() -> float:
        return metrics.registry.get_sample_value("digits_queue_wait_seconds_sum")

    async def main():
        batcher = Batcher(metrics, max_batch_size=64, busy_queue_delay=0.3)
        batcher.start()
        for _ in range(3):  # one client, one request at a time: never waits
            await batcher.predict(model, one)
        lone = waited()
        await asyncio.gather(*(batcher.predict(model, one) for _ in range(4)))  # merged: traffic is busy
        before = waited()
        await batcher.predict(model, one)  # now a partial batch waits for company
        busy = waited() - before
        await batcher.close()
        return lone, busy

    lone, busy = asyncio.run(main())
    assert lone < 0.1
    assert busy >= 0.25


def test_busy_wait_ends_once_as_many_requests_are_queued_as_a_recent_batch_merged(model):
    # Four clients in lock step: once all four are back, waiting longer gains nothing (it only idles
    # the model); fewer than four still wait for company.
    metrics = ServingMetrics()
    one = np.zeros((1, 28, 28), np.float32)

    async def main():
        batcher = Batcher(metrics, max_batch_size=64, busy_queue_delay=30.0)
        batcher.start()
        await asyncio.gather(*(batcher.predict(model, one) for _ in range(4)))  # one batch of four
        began = time.perf_counter()
        tasks = await _submit_staggered(batcher, model, count=4, gap=0.02)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)  # not the 30 s busy delay
        four_back = time.perf_counter() - began
        tasks = await _submit_staggered(batcher, model, count=3, gap=0.02)
        await asyncio.sleep(0.3)
        three_waiting = not any(task.done() for task in tasks)
        await batcher.close()  # runs the waiting batch without the delay
        await asyncio.gather(*tasks)
        return four_back, three_waiting

    four_back, three_waiting = asyncio.run(main())
    assert four_back < 5
    assert three_waiting
    assert metrics.registry.get_sample_value("digits_batch_size_count") == 3
    assert metrics.registry.get_sample_value("digits_batch_size_sum") == 4 + 4 + 3


def test_max_queue_delay_is_not_cut_short_by_the_recent_peak(model):
    # max_queue_delay keeps TF Serving's meaning: a partial batch waits for the timeout or a full batch.
    one = np.zeros((1, 28, 28), np.float32)

    async def main():
        batcher = Batcher(ServingMetrics(), max_batch_size=64, max_queue_delay=0.4)
        batcher.start()
        await asyncio.gather(*(batcher.predict(model, one) for _ in range(4)))  # one batch of four
        began = time.perf_counter()
        await asyncio.gather(*await _submit_staggered(batcher, model, count=4, gap=0.01))
        took = time.perf_counter() - began
        await batcher.close()
        return took

    assert asyncio.run(main()) >= 0.35


def test_full_queue_rejects_at_once(model):
    async def main():
        batcher = Batcher(ServingMetrics(), max_batch_size=64, max_queue_delay=0.2, max_queued_images=4)
        batcher.start()
        first = asyncio.create_task(batcher.predict(model, np.zeros((3, 28, 28), np.float32)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.predict(model, np.zeros((2, 28, 28), np.float32))
        assert len((await first)[1]) == 3
        await batcher.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["environment", "flag"])
def test_a_bad_default_model_exits_2_naming_the_field(tmp_path, how):
    """A name the repository contract rejects is a settings error (exit 2), not a traceback."""
    env = {**os.environ, "DIGITS_MODEL_ROOT": str(tmp_path)}
    args = [sys.executable, "-m", "serving.server", "--http-port", "0", "--port", "0", "--metrics-port", "0"]
    if how == "environment":
        env["DIGITS_DEFAULT_MODEL"] = "../etc"
    else:
        args += ["--default-model", "../etc"]
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "default_model" in result.stderr and "not a valid folder name" in result.stderr
    assert "Traceback" not in result.stderr
