"""The gateway's Prometheus metrics (its own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class GatewayMetrics:
    """Requests, how long they waited for their model, errors, and what is in flight."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modeld_gateway_requests",
            "Inference requests answered, by model, path and HTTP status.",
            ["model", "path", "status"],
            registry=self.registry,
        )
        self.load_wait = Histogram(
            "modeld_gateway_load_wait_seconds",
            "How long a request waited for its model to run (load, switch or its turn).",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "modeld_gateway_errors",
            "Refused or failed requests, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modeld_gateway_requests_in_flight",
            "Inference requests in flight (waiting for their model or being answered).",
            registry=self.registry,
        )
        self.waiting = Gauge(
            "modeld_gateway_requests_waiting",
            "Inference requests waiting here for their model (a load, a wake, their turn).",
            registry=self.registry,
        )
        self.waiting_bytes = Gauge(
            "modeld_gateway_waiting_body_bytes",
            "Bytes of request bodies, as sent, held by requests not yet granted their model.",
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "modeld_gateway_event_streams",
            "Clients following /events.",
            registry=self.registry,
        )
        self.connections = Gauge(
            "modeld_gateway_connections",
            "Client connections open.",
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "modeld_gateway_connections_refused",
            "Connections closed on opening: max_connections were open.",
            registry=self.registry,
        )
        self.header_timeouts = Counter(
            "modeld_gateway_header_timeouts",
            "Connections closed because a request's headers did not arrive in time.",
            registry=self.registry,
        )
        self.hangups = Counter(
            "modeld_gateway_client_hangups",
            "Requests whose client went away before the answer ended.",
            registry=self.registry,
        )

        self.key_reload_failures = Counter(
            "modeld_gateway_key_reload_failures",
            "Key reloads refused (a key file missing, unreadable or empty): the keys "
            "loaded before stay in force.",
            registry=self.registry,
        )
        self.key_loads = Counter(
            "modeld_gateway_key_loads",
            "Loads and wakes caused by a budgeted key's requests, by key name.",
            ["key"],
            registry=self.registry,
        )
        self.key_loads_refused = Counter(
            "modeld_gateway_key_loads_refused",
            "Requests refused because their key's load budget was spent, by key name.",
            ["key"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The text format."""
        return generate_latest(self.registry)
