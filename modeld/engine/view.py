"""The status view: every model in the seed's fields and the GPU block, built from
memory and rebuilt only when something it shows has changed (callers may ask thousands
of times a second). The one signal is the Revision every Model's change and every other
shown change bumps; elapsed times in the view are refreshed every STATUS_MAX_AGE_S."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from modeld.core.jsonraw import RawJSON
from modeld.core.states import State
from modeld.engine.backends import Backends
from modeld.engine.status_fields import gpu_view, model_view, models_view, runtime_view
from modeld.wire.status import GpuStatus, ModelInfo, Parking, Status, without_backend_output

# The view shows times (how long a model has been loading): at most this stale.
STATUS_MAX_AGE_S = 0.5


class StatusView:
    """`status`, `gpu`, `models` and the systemd status line, from memory."""

    def __init__(
        self, backends: Backends, busy: Callable[[], int], subscribers: Callable[[], int]
    ) -> None:
        self._backends = backends
        self._registry = backends.registry
        self._busy = busy
        self._subscribers = subscribers
        self._key: tuple[Any, ...] | None = None
        self._view: Status | None = None
        self._json = RawJSON(b"{}")
        self._redacted: RawJSON | None = None

    def status(self) -> Status:
        """The whole view."""
        self._refresh()
        assert self._view is not None, "built by the refresh"
        return self._view

    def status_json(self, redacted: bool = False) -> RawJSON:
        """The view serialized once per change; `redacted`: without the lines backends
        printed (for callers who may not read logs)."""
        self._refresh()
        if not redacted:
            return self._json
        if self._redacted is None:
            assert self._view is not None, "built by the refresh"
            self._redacted = RawJSON(without_backend_output(self._view).model_dump_json().encode())
        return self._redacted

    def _refresh(self) -> None:
        ledger = self._backends.ledger
        key = (
            self._registry.revision.value,
            id(ledger.reading),
            ledger.error,
            int(time.monotonic() / STATUS_MAX_AGE_S),
        )
        if key == self._key:
            return
        self._view = self._build()
        self._json = RawJSON(self._view.model_dump_json().encode())
        self._redacted = None
        self._key = key

    def _build(self) -> Status:
        now, ledger = time.monotonic(), self._backends.ledger
        models = self._registry.models.values()
        busy = self._busy()
        return Status(
            models={
                name: model_view(r, ledger.reading, now)
                for name, r in self._registry.models.items()
            },
            gpu=self.gpu(),
            parking=Parking(
                ram_budget_gb=self._registry.config.daemon.park_ram_gb,
                ram_used_gb=round(ledger.ram_parked_gb(models), 1),
                # What the next park may take: the budget's rest, within the host's spare.
                ram_free_gb=round(max(0.0, ledger.ram_free_gb(models)), 1),
            ),
            runtimes=runtime_view(self._backends.runtime_errors),
            eviction_policy=self._registry.config.daemon.eviction_policy,
            busy=busy > 0,
            in_flight=busy,
            subscribers=self._subscribers(),
        )

    def gpu(self) -> GpuStatus:
        """The last GPU reading in the seed's shape, with devices and freshness."""
        ledger = self._backends.ledger
        return gpu_view(ledger.reading, ledger.backend, ledger.error, ledger.health.devices)

    def models(self) -> list[ModelInfo]:
        """The configured models."""
        return models_view(self._registry.models.values(), self._backends.ledger.reading)

    def summary(self) -> str:
        """One line for `systemctl status`: e.g. "2 running, 1 loading · 41.3 GB free"."""
        counts = Counter(r.state for r in self._registry.models.values())
        shown_states = (State.RUNNING, State.LOADING, State.SLEEPING, State.FAILED)
        parts = [f"{counts[s]} {s.value}" for s in shown_states]
        shown = ", ".join(p for p in parts if not p.startswith("0 ")) or "none running"
        return f"{shown} · {self.gpu().available_gb:.1f} GB free"
