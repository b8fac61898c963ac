"""The `[gateway]` and `[metrics]` tables of the configuration (the daemon checks them;
`modeld-gateway` and the metrics endpoint read them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from modeld.core.config_base import PositiveFloat, Strict, host_port


class MetricsConfig(Strict):
    """The optional `[metrics]` table: Prometheus metrics over HTTP."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return value if value is None else host_port(value)


class GatewayConfig(Strict):
    """The `[gateway]` table, read by `modeld-gateway` (the daemon only checks it)."""

    listen: str = "127.0.0.1:8080"
    # The daemon's socket; default: daemon.socket.
    socket: Path | None = None
    # Bearer keys; when any is set, every endpoint but the dashboard's files needs one.
    # Each entry is "KEY" or "NAME KEY" (the name shows in logs and metrics, never the
    # key). api_keys are admins (everything); inference_keys may run inference and read
    # models, status and events, and their loads are budgeted (key_loads_per_minute).
    api_keys: list[Annotated[str, Field(min_length=8)]] = Field(default_factory=list)
    api_keys_file: Path | None = None
    inference_keys: list[Annotated[str, Field(min_length=8)]] = Field(default_factory=list)
    inference_keys_file: Path | None = None
    # /health and /metrics without a key, for load balancers and Prometheus (which send
    # none). Off by default: the metrics name every key, and both say the daemon runs.
    health_without_key: bool = False
    metrics_without_key: bool = False
    # /metrics without a key answers only the model-server families an endpoint picker
    # scores with (vllm:*: no key names, no paths); with an admin key, everything.
    model_server_metrics_without_key: bool = False
    # Loads and wakes one non-admin key's requests may cause in a sliding minute (0: no
    # limit); past it, a request that would cause one more is 429 load_rate_limited.
    key_loads_per_minute: Annotated[int, Field(ge=0)] = 10
    # Host names (the Host header) served besides the listen address and loopback's, and
    # browser origins allowed besides the gateway's own (answered with CORS headers).
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list
    )
    allowed_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]] = Field(
        default_factory=list
    )
    # A request body larger than this, counted after decompression, is refused (413)
    # before it is read further; one that does not arrive within body_timeout_s is
    # refused (408).
    max_body_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    body_timeout_s: PositiveFloat = 60.0
    # An answer still going after this long is cut and its lease released.
    max_request_s: PositiveFloat = 3600.0
    # How long a request waits for its model to run (its load, or its turn behind others).
    acquire_timeout_s: PositiveFloat = 600.0
    # The backend must accept the connection within this, and send each next piece of
    # its answer within upstream_read_timeout_s (a long answer is fine; a stalled one is not).
    upstream_connect_timeout_s: PositiveFloat = 10.0
    upstream_read_timeout_s: PositiveFloat = 600.0
    # A caller that leaves a piece of its answer untaken this long (checked every that
    # long: cut off after one to two times it) is cut off: one that stops reading would
    # otherwise hold its model's lease, so nothing could ever evict it.
    client_write_timeout_s: PositiveFloat = 60.0
    # Requests in flight at once (waiting included); past it, 429. One inference key may
    # hold at most max_requests_per_key of them.
    max_requests: Annotated[int, Field(ge=1)] = 1024
    max_requests_per_key: Annotated[int, Field(ge=1)] = 128
    # Requests that may wait here for a load or their turn at once (none: no bound); past
    # it the next is refused at once (503 queue_full, Retry-After) so a router tries
    # another host. Each inference key may hold its share (max_queue divided among the
    # inference keys, at least 1; past it 429 key_queue_full); admin keys have max_queue
    # places of their own, so inference keys never lock them out.
    max_queue: Annotated[int, Field(ge=1)] | None = None
    # The bytes of request bodies (as sent: compressed bodies count compressed) held by
    # requests not yet granted their model: past it 503 bodies_full; each inference key's
    # share is max_waiting_bytes divided among the inference keys, at least one
    # max_body_bytes (past it 429 key_bodies_full); admins have an account of their own.
    max_waiting_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024
    # Server-sent event streams (/events) at once, and per client (its key, or its
    # address on a gateway without keys).
    max_event_streams: Annotated[int, Field(ge=1)] = 64
    max_event_streams_per_client: Annotated[int, Field(ge=1)] = 8
    # Client connections at once (past it a new one is answered 503 and closed); a request's
    # headers must arrive within header_timeout_s of the connection's opening (or of its
    # first byte after an answer); a silent connection closes after keepalive_timeout_s.
    max_connections: Annotated[int, Field(ge=1)] = 4096
    header_timeout_s: PositiveFloat = 30.0
    keepalive_timeout_s: PositiveFloat = 75.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return host_port(value)

    @model_validator(mode="after")
    def _room_for_a_body(self) -> GatewayConfig:
        if self.max_waiting_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_waiting_bytes ({self.max_waiting_bytes}) must be at least max_body_bytes "
                f"({self.max_body_bytes}): a body of the largest size could never wait"
            )
        return self
