"""Prometheus metrics of the service (names in docs/interfaces.md), on a registry per server instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond resolution: a small MLP answers in ~100 us, the transport adds a few hundred.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PROTOCOLS = ("grpc", "http")


class InflightCount:
    """Requests in flight for one protocol: a plain integer that the gauge reads when it is scraped.

    Only the event loop's thread changes it (gRPC and HTTP handlers both run there), so it needs no
    lock; ``Gauge.inc``/``dec`` take one on every call, twice per request.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1

    def get(self) -> int:
        return self.value


class ServingMetrics:
    """All metrics of one server; a fresh registry per instance keeps tests and servers independent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "digits_requests",
            "Requests handled, by protocol, method and status (the gRPC status name, for HTTP too)",
            ["protocol", "method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "digits_request_duration_seconds",
            "Server-side request latency: parsing, validation, queueing, model call and encoding",
            ["protocol", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("digits_images_classified", "Images classified", registry=r)
        self.batch_size = Histogram(
            "digits_batch_size", "Images per model call", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "digits_queue_wait_seconds",
            "Time a request waited in the batching queue",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_execution = Histogram(
            "digits_model_execution_seconds",
            "Duration of one model call",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "digits_inflight_requests", "Requests being handled, by protocol", ["protocol"], registry=r
        )
        self.inflight_by_protocol = {p: InflightCount() for p in PROTOCOLS}
        for protocol, count in self.inflight_by_protocol.items():
            self.inflight.labels(protocol=protocol).set_function(count.get)
        self.loaded_version = Gauge(
            "digits_model_loaded_version", "Newest loaded version (0: none)", ["model"], registry=r
        )
        self.model_loads = Counter(
            "digits_model_loads", "Model version loads by outcome", ["model", "outcome"], registry=r
        )
        self.predicted_class = Counter(
            "digits_predicted_class", "Predictions per digit", ["digit"], registry=r
        )
        # Label children are looked up once: .labels() costs a lock and a dict lookup per call.
        self.digit_counters = [self.predicted_class.labels(digit=str(d)) for d in range(10)]
        self._durations: dict[tuple[str, str], Histogram] = {}
        self._counts: dict[tuple[str, str, str], Counter] = {}

    def observe_request(self, protocol: str, method: str, code: str, seconds: float) -> None:
        """Record one finished request (``protocol``: grpc or http; ``code``: a gRPC status name)."""
        counter = self._counts.get((protocol, method, code))
        if counter is None:
            counter = self._counts[(protocol, method, code)] = self.requests.labels(
                protocol=protocol, method=method, code=code
            )
        counter.inc()
        duration = self._durations.get((protocol, method))
        if duration is None:
            duration = self._durations[(protocol, method)] = self.request_duration.labels(
                protocol=protocol, method=method
            )
        duration.observe(seconds)

    def observe_predictions(self, classes_counts: list[int]) -> None:
        """Count one batch's predictions: ``classes_counts[d]`` images were classified as digit d."""
        for digit, count in enumerate(classes_counts):
            if count:
                self.digit_counters[digit].inc(count)
