"""Operations: the one lock that serializes decisions and their effects, who asked for
each (logged with the caller's uid/pid), and how many callers are in flight."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping

import structlog

from modeld.core.errors import ModeldError, UnknownModel
from modeld.engine.lifecycle import Lifecycle
from modeld.engine.model import Model

log = structlog.get_logger("modeld.engine.operations")

# Who asked for an operation, as its log lines name them: uid and pid, a signal, preload.
Asker = Mapping[str, int]
AUTO_RESTART = "auto_restart"
IDLE_UNLOAD = "idle_unload"
# Operations that only a model still in the config may take (stop works on any).
MANAGED_ONLY = frozenset({"switch", "start", "restart", AUTO_RESTART})


class Operations:
    """The lock, the audit log of operations, and the in-flight count."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self.lock = asyncio.Lock()
        self.busy = 0

    @contextlib.asynccontextmanager
    async def operation(
        self, op: str, record: Model | None, caller: Asker | None
    ) -> AsyncIterator[None]:
        """Hold the lock for one decision and its effects; log it, with its caller. Every
        log line written meanwhile (and by the tasks it starts: a load, a wake) carries
        `op`, `model` and `caller` (structlog's context)."""
        model = record.name if record else None
        with structlog.contextvars.bound_contextvars(op=op, model=model, caller=dict(caller or {})):
            log.info("operation.requested")
            if record is not None and op != AUTO_RESTART:
                record.restarts_taken_over()  # an operator acting on the model takes over
            with self.counted():  # waiting for its turn is being in flight too
                async with self.lock:
                    started = time.monotonic()
                    try:
                        if record is not None:
                            self._still_configured(record, op)
                        yield
                    except ModeldError as exc:
                        log.warning(
                            "operation.failed", error=exc.data["error"], message=exc.message
                        )
                        raise
                    log.info("operation.done", seconds=round(time.monotonic() - started, 3))

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """A caller in flight: waiting for the lock, or for health outside it."""
        self.busy += 1
        self._lifecycle.revision.bump()
        try:
            yield
        finally:
            self.busy -= 1
            self._lifecycle.revision.bump()

    def _still_configured(self, record: Model, op: str) -> None:
        """Under the lock: the record a call looked up before its turn is still the one
        configured (a reload meanwhile may have removed it)."""
        managed = op in MANAGED_ONLY
        current = self._lifecycle.records.get(record.name)
        if current is record and not (record.unmanaged and managed):
            return
        self._lifecycle.record(record.name, managed=managed)  # raises UnknownModel
        raise UnknownModel(
            f"Model '{record.name}' was replaced by a reload while this call waited; call again",
            model=record.name,
            available=sorted(n for n, r in self._lifecycle.records.items() if not r.unmanaged),
        )
