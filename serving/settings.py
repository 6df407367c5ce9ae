"""Service settings: command-line flags override ``DIGITS_*`` environment variables override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

import modelrepo


class Settings(BaseSettings):
    """Every knob of ``python -m serving.server``; each field is ``--kebab-name`` or ``DIGITS_UPPER_NAME``."""

    model_config = SettingsConfigDict(
        env_prefix="DIGITS_",
        cli_kebab_case=True,
        cli_prog_name="python -m serving.server",
        cli_implicit_flags=True,
        extra="ignore",
        protected_namespaces=(),
    )

    model_root: Path = Field(description="model repository root: <root>/<model_name>/<version>/")
    default_model: str = Field(
        default=modelrepo.DEFAULT_MODEL_NAME, description="model answering requests that name no model"
    )
    host: str = Field(default="0.0.0.0", description="gRPC and HTTP listen address")
    port: int = Field(default=8500, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="HTTP/JSON port: Open Inference Protocol v2 REST, TF Serving REST, the page at / "
        "(0 picks a free one)",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="largest HTTP request body (413 above it)"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed to call the HTTP API from a browser (CORS); empty: CORS off. "
        "Environment: a JSON list, e.g. '[\"https://example.org\"]'",
    )
    metrics_host: str = Field(default="0.0.0.0", description="metrics HTTP listen address")
    metrics_port: int = Field(default=8000, ge=0, le=65535, description="/metrics port (0 picks a free one)")
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="how often the model repository is checked for new versions"
    )
    max_loaded_versions: int = Field(
        default=2, ge=1, description="newest versions kept loaded (older ones are unloaded)"
    )
    max_batch_size: int = Field(default=256, ge=1, description="most images merged into one model call")
    max_queue_delay_us: int = Field(
        default=0,
        ge=0,
        description="how long every partial batch waits for more requests before it runs (0: no fixed wait)",
    )
    busy_queue_delay_us: int = Field(
        default=3000,
        ge=0,
        description="under concurrent traffic only, how long a partial batch may wait for more requests; "
        "the wait ends early once as many are queued as the largest batch of the last 100 ms "
        "(a lone client never waits; 0: never)",
    )
    max_queued_images: int = Field(
        default=8192, ge=1, description="images waiting for the model before RESOURCE_EXHAUSTED"
    )
    max_images_per_request: int = Field(default=1024, ge=1, description="largest batch in one request")
    batch_threads: int = Field(
        default=0,
        ge=0,
        description="0: call the model on the event loop thread (no GIL contention; best for a small "
        "model on few cores); N: up to N calls at once, each on its own thread",
    )
    tf_intra_op_threads: int = Field(
        default=1,
        ge=0,
        description="TensorFlow threads inside one op (0: TensorFlow's default, one per core)",
    )
    tf_inter_op_threads: int = Field(
        default=1, ge=0, description="TensorFlow ops run in parallel (0: TensorFlow's default)"
    )
    max_message_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="largest gRPC request or response message"
    )
    grace_seconds: float = Field(
        default=10.0, ge=0, description="on SIGTERM, time given to in-flight requests to finish"
    )
    http_idle_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="HTTP connections idle this long are closed: after an answer (keep-alive) or after "
        "opening without sending a byte",
    )
    http_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a request's headers must arrive complete this long after its first byte; slower "
        "connections (slowloris) are closed",
    )
    http_body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a request's body must arrive complete this long after its headers; slower "
        "connections are closed and the request counted CANCELLED. 30 s lets the largest allowed body "
        "cross a slow link (16 MiB at about 4.5 Mbit/s) while a client dripping bytes cannot hold a "
        "connection and a request for ever",
    )
    http_max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="largest request line plus headers of one HTTP request (431 above it)",
    )
    http_max_headers: int = Field(
        default=100, ge=8, description="most headers in one HTTP request (431 above it)"
    )
    grpc_handshake_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a gRPC connection must finish its HTTP/2 (and TLS) handshake in this time",
    )
    grpc_idle_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="a gRPC connection with no call on it for this long is closed (GOAWAY)",
    )
    grpc_keepalive_seconds: float = Field(
        default=60.0,
        gt=0,
        description="the server pings each gRPC client this often to find dead connections",
    )
    grpc_keepalive_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="a gRPC client that does not answer a ping within this is disconnected",
    )
    shutdown_quiet_seconds: float = Field(
        default=0.2,
        ge=0,
        description="on SIGTERM, after in-flight requests finish, keep answering UNAVAILABLE until no "
        "request arrived for this long (within grace_seconds), then close the ports",
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain; enables TLS with tls_key")
    tls_key: Path | None = Field(default=None, description="PEM private key for tls_cert")
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle; with TLS on, both ports require client certificates signed by it (mTLS)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")

    @field_validator("default_model")
    @classmethod
    def _model_name(cls, name: str) -> str:
        # ModelRepositoryError is not a ValueError: pydantic would let it escape as a traceback.
        try:
            return modelrepo.validate_model_name(name)
        except modelrepo.ModelRepositoryError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together (or neither)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.max_images_per_request > self.max_queued_images:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) cannot exceed "
                f"max_queued_images ({self.max_queued_images})"
            )
        largest = self.max_images_per_request * 28 * 28 * 4 + 4096  # float form, plus framing
        if largest > self.max_message_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) is too small for max_images_per_request "
                f"({self.max_images_per_request}) float images: need at least {largest}"
            )
        if self.http_port and self.http_port in (self.port, self.metrics_port):
            raise ValueError(f"http_port {self.http_port} is also the gRPC or metrics port")
        return self


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Settings from ``argv`` (flags win), then the environment, then defaults; exits on bad input."""
    return CliApp.run(Settings, cli_args=argv if argv is not None else None)
