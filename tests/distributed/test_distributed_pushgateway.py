"""Progress gauges reach a real Pushgateway; a missing gateway never fails the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.pushmetrics import ProgressPusher, Snapshot
from tests.support import free_port
from tests.support.distributed import gateway_samples, pushgateway


@pytest.fixture
def gateway(tmp_path: Path):
    with pushgateway(tmp_path) as address:
        yield address


def test_progress_and_last_success_reach_the_pushgateway(gateway: str) -> None:
    clock = iter([100.0, 112.5, 130.0, 131.0]).__next__
    pusher = ProgressPusher(gateway, clock=clock)
    assert pusher.update(Snapshot(completed=1, failed=0, best=0.91))
    samples = gateway_samples(gateway)
    assert samples["digits_tune_trials_completed"] == 1
    assert samples["digits_tune_trials_failed"] == 0
    assert samples["digits_tune_best_val_accuracy"] == pytest.approx(0.91)
    assert samples["digits_tune_elapsed_seconds"] == pytest.approx(12.5)
    assert "digits_tune_last_success_timestamp_seconds" not in samples  # only at the successful end

    assert not pusher.update(Snapshot(1, 0, 0.91))  # unchanged: no push
    assert pusher.update(Snapshot(completed=3, failed=1, best=0.95))
    assert pusher.success()
    samples = gateway_samples(gateway)
    assert (samples["digits_tune_trials_completed"], samples["digits_tune_trials_failed"]) == (3, 1)
    assert samples["digits_tune_best_val_accuracy"] == pytest.approx(0.95)
    assert samples["digits_tune_last_success_timestamp_seconds"] > 1.7e9


def test_a_new_run_keeps_the_previous_last_success_until_it_succeeds(gateway: str) -> None:
    first = ProgressPusher(gateway)
    first.update(Snapshot(2, 0, 0.9))
    first.success()
    stamp = gateway_samples(gateway)["digits_tune_last_success_timestamp_seconds"]

    second = ProgressPusher(gateway)
    second.update(Snapshot(1, 0, 0.8))
    samples = gateway_samples(gateway)
    assert samples["digits_tune_trials_completed"] == 1  # progress of the new run ...
    assert samples["digits_tune_last_success_timestamp_seconds"] == stamp  # ... beside the old success


def test_unreachable_gateway_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    pusher = ProgressPusher(f"127.0.0.1:{free_port()}")
    assert not pusher.update(Snapshot(1, 0, 0.5))
    assert not pusher.success()
    assert "push to Pushgateway" in caplog.text


def test_no_gateway_configured_pushes_nothing() -> None:
    assert not ProgressPusher(None).update(Snapshot(1, 0, 0.5))
