"""Dynamic batching: requests queued at the same time are merged into one model call.

A batch runs as soon as the model is free, so a lone request waits for nothing and, under load,
requests that arrive while a call runs form the next batch. Under concurrent traffic (a batch merged
several requests in the last 100 ms) a partial batch also waits up to ``busy_queue_delay`` for more
requests: a client sending one request at a time never pays it. With
``max_queue_delay`` set, every partial batch waits up to that long for more images, as in TF Serving.
The queue is bounded in images; a request that would overflow it gets RESOURCE_EXHAUSTED at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import ModelUnavailable, Overloaded
from .metrics import ServingMetrics
from .model_store import LoadedModel

log = logging.getLogger(__name__)

# A batch that merged several requests marks the traffic as concurrent for this long.
BUSY_WINDOW_SECONDS = 0.1


@dataclass(slots=True)
class _Item:
    model: LoadedModel
    images: np.ndarray
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Merges concurrent requests per model version into batches of at most ``max_batch_size`` images."""

    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        max_batch_size: int = 256,
        max_queue_delay: float = 0.0,
        busy_queue_delay: float = 0.0,
        max_queued_images: int = 8192,
        threads: int = 0,
    ) -> None:
        self._metrics = metrics
        self._max_batch = max_batch_size
        self._delay = max_queue_delay
        self._busy_delay = busy_queue_delay
        self._max_queued = max_queued_images
        self._threads = threads
        self._queue: deque[_Item] = deque()
        self._queued_images = 0
        # threads=0: call the model on the event loop's own thread (no hand-off, no GIL ping-pong)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="model") if threads else None
        self._wakeup: asyncio.Event | None = None
        self._filling = False  # a partial batch is waiting for more requests
        self._to_peak = False  # ...and it is a busy wait, which ends once the recent peak is queued
        self._free = asyncio.Semaphore(max(threads, 1))
        self._task: asyncio.Task | None = None
        self._closing = False
        self._draining = False
        self._running: set[asyncio.Task] = set()
        self._last_merge = -BUSY_WINDOW_SECONDS  # when a batch last merged several requests
        # The most requests a batch merged lately (in the last BUSY_WINDOW_SECONDS): about that many
        # clients are in play, so a busy wait ends once that many requests are queued.
        self._peak_requests = 0
        self._peak_at = -BUSY_WINDOW_SECONDS

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def predict(self, model: LoadedModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Queue ``images`` (float32 [n, 28, 28]) for ``model``; returns (probabilities, classes)."""
        if self._closing:
            raise ModelUnavailable("the server is shutting down")
        count = len(images)
        if self._queued_images + count > self._max_queued:
            raise Overloaded(
                f"the batching queue is full ({self._queued_images} of {self._max_queued} images queued); "
                "retry later"
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(model, images, future, time.perf_counter()))
        self._queued_images += count
        # While a partial batch waits to fill, only a ready batch (full, or a busy wait's recent peak
        # reached) ends the wait early: waking the batcher for every arriving request would cost a
        # task switch per request.
        if not self._filling or self._batch_ready():
            self._wakeup.set()
        return await future

    def drain(self) -> None:
        """Shutting down: stop waiting for partial batches to fill; still accept requests."""
        self._draining = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self) -> None:
        """Run what is queued (without waiting for the queue delay), then stop."""
        self._closing = self._draining = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._free.acquire()
            if self._delay > 0 and not self._draining:
                await self._wait_for_batch(self._queue[0].enqueued + self._delay, to_peak=False)
            elif (
                self._busy_delay > 0
                and not self._draining
                and time.perf_counter() - self._last_merge < BUSY_WINDOW_SECONDS
            ):
                # Concurrent traffic (a recent batch merged several requests): the clients it
                # answered are about to send again, so give them a moment to join this batch.
                await self._wait_for_batch(self._queue[0].enqueued + self._busy_delay, to_peak=True)
            items = self._take_batch()
            if self._threads <= 1:  # one call at a time: run it here and save a task per batch
                await self._run(items)
                continue
            task = asyncio.get_running_loop().create_task(self._run(items))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _batch_ready(self) -> bool:
        """A waiting batch need not wait longer: it is full, or (a busy wait) as many requests are
        queued as the largest recent batch merged: the clients it answered are back."""
        if self._queued_images >= self._max_batch:
            return True
        return self._to_peak and self._peak_requests > 1 and len(self._queue) >= self._peak_requests

    async def _wait_for_batch(self, deadline: float, *, to_peak: bool) -> None:
        """Wait until the batch is ready, the deadline passes or shutdown drains the queue.

        ``to_peak``: the busy wait, which also ends at the recent peak; ``max_queue_delay`` keeps TF
        Serving's meaning (a partial batch waits for the timeout or a full batch)."""
        self._to_peak = to_peak
        remaining = deadline - time.perf_counter()
        if remaining <= 0 or self._batch_ready() or self._draining:
            return
        self._filling = True
        self._wakeup.clear()
        timer = asyncio.get_running_loop().call_later(remaining, self._wakeup.set)
        try:
            await self._wakeup.wait()  # set by the timer, a full batch, or drain()
        finally:
            timer.cancel()
            self._filling = False

    def _take_batch(self) -> list[_Item]:
        """Oldest request first, then later ones for the same model version while they fit."""
        first = self._queue.popleft()
        items, size = [first], len(first.images)
        skipped: list[_Item] = []
        while self._queue and size < self._max_batch:
            item = self._queue[0]
            if size + len(item.images) > self._max_batch:
                break
            self._queue.popleft()
            if item.model is first.model:
                items.append(item)
                size += len(item.images)
            else:  # another version (a swap happened): it goes into a later batch
                skipped.append(item)
        self._queue.extendleft(reversed(skipped))
        self._queued_images -= size
        if len(items) > 1:
            now = time.perf_counter()
            if len(items) >= self._peak_requests or now - self._peak_at > BUSY_WINDOW_SECONDS:
                self._peak_requests, self._peak_at = len(items), now
            self._last_merge = now
        return items

    async def _run(self, items: list[_Item]) -> None:
        try:
            live = [item for item in items if not item.future.done()]  # skip cancelled requests
            if not live:
                return
            started = time.perf_counter()
            for item in live:
                self._metrics.queue_wait.observe(started - item.enqueued)
            parts = [item.images for item in live]
            try:  # whatever the model does, the batcher itself must keep running
                if self._executor is None:
                    probabilities, classes, seconds = _call_model(live[0].model, parts)
                else:
                    probabilities, classes, seconds = await asyncio.get_running_loop().run_in_executor(
                        self._executor, _call_model, live[0].model, parts
                    )
                total = sum(len(part) for part in parts)
                if probabilities.shape != (total, 10) or classes.shape != (total,):
                    raise RuntimeError(
                        f"model returned shapes {probabilities.shape} and {classes.shape} for {total} images"
                    )
                self._metrics.model_execution.observe(seconds)
                self._metrics.batch_size.observe(total)
                self._metrics.images.inc(total)
                valid = classes[(classes >= 0) & (classes < 10)]
                self._metrics.observe_predictions(np.bincount(valid, minlength=10).tolist())
            except Exception as exc:
                log.exception("model call failed for a batch of %d requests", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            start = 0
            for item in live:
                end = start + len(item.images)
                if not item.future.done():
                    item.future.set_result((probabilities[start:end], classes[start:end]))
                start = end
        finally:
            self._free.release()
            if self._queue:
                self._wakeup.set()


def _call_model(model: LoadedModel, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """Runs on a batch thread: merge, call the model once, time the call."""
    images = parts[0] if len(parts) == 1 else np.concatenate(parts)
    started = time.perf_counter()
    probabilities, classes = model.predict(images)
    return probabilities, classes, time.perf_counter() - started
