"""Operations: the one lock that serializes decisions and their effects, who asked for
each (logged with the caller's uid/pid), and how many callers are in flight."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping

import structlog

from modeld.core.errors import ModeldError, UnknownModel
from modeld.engine.model import Model
from modeld.engine.registry import Registry

log = structlog.get_logger("modeld.engine.operations")

# Who asked for an operation, as its log lines name them: uid and pid, a signal, preload.
Asker = Mapping[str, int]
AUTO_RESTART = "auto_restart"
IDLE_UNLOAD = "idle_unload"
# Operations that only a model still in the config may take (stop works on any).
MANAGED_ONLY = frozenset({"switch", "start", "restart", AUTO_RESTART})


class Operations:
    """The lock, the audit log of operations, and the in-flight count."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.lock = asyncio.Lock()
        self.busy = 0

    @contextlib.asynccontextmanager
    async def operation(
        self, op: str, model: Model | None, caller: Asker | None
    ) -> AsyncIterator[None]:
        """Hold the lock for one decision and its effects; log it, with its caller. Every
        log line written meanwhile (and by the tasks it starts: a load, a wake) carries
        `op`, `model` and `caller` (structlog's context)."""
        name = model.name if model else None
        with structlog.contextvars.bound_contextvars(op=op, model=name, caller=dict(caller or {})):
            log.info("operation.requested")
            if model is not None and op != AUTO_RESTART:
                model.restarts_taken_over()  # an operator acting on the model takes over
            with self.counted():  # waiting for its turn is being in flight too
                async with self.lock:
                    started = time.monotonic()
                    try:
                        if model is not None:
                            self._still_configured(model, op)
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
        self._registry.revision.bump()
        try:
            yield
        finally:
            self.busy -= 1
            self._registry.revision.bump()

    def _still_configured(self, model: Model, op: str) -> None:
        """Under the lock: the Model a call looked up before its turn is still the one
        configured (a reload meanwhile may have removed it)."""
        managed = op in MANAGED_ONLY
        current = self._registry.models.get(model.name)
        if current is model and not (model.unmanaged and managed):
            return
        self._registry.model(model.name, managed=managed)  # raises UnknownModel
        raise UnknownModel(
            f"Model '{model.name}' was replaced by a reload while this call waited; call again",
            model=model.name,
            available=sorted(n for n, r in self._registry.models.items() if not r.unmanaged),
        )
