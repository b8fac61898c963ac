"""Backends: start, stop and inspect the registry's models' backends, and watch a load
to health (each outcome recorded through the Model's intents)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import structlog

from modeld.adapters.runtime.base import BackendStatus, Runtime
from modeld.adapters.socketdir import prepare_backend_socket
from modeld.adapters.vllm import VllmClient
from modeld.core.errors import (
    GpuUnavailable,
    LoadFailed,
    ModeldError,
    OperationFailed,
    OperationTimeout,
    RuntimeUnavailable,
)
from modeld.core.states import Failure, State
from modeld.engine.facts import LoadTask
from modeld.engine.ledger import GpuLedger
from modeld.engine.loras import LoraLoads
from modeld.engine.model import Model
from modeld.engine.probes import probe
from modeld.engine.readiness import await_ready
from modeld.engine.registry import Registry

log = structlog.get_logger("modeld.engine.backends")


class Backends:
    """The registry's models' backends: start, stop, inspect, watch a load."""

    def __init__(
        self,
        registry: Registry,
        runtimes: Mapping[str, Runtime],
        vllm: VllmClient,
        ledger: GpuLedger,
    ) -> None:
        self.registry = registry
        self.runtimes = runtimes
        self.vllm = vllm
        self.ledger = ledger
        self.runtime_errors: dict[str, str | None] = {name: None for name in runtimes}
        # Adapters' "backends": their loads into their bases.
        self.loras = LoraLoads(registry, vllm)
        # Set once the daemon stops: callers waiting on a load are answered at once.
        self.closing = asyncio.Event()

    async def wait_load(
        self, model: Model, load: LoadTask, timeout: float | None
    ) -> ModeldError | None:
        """A load's outcome; a caller's own deadline (OperationTimeout: the load goes on), the
        daemon stopping (OperationFailed: nobody is kept waiting through its shutdown), or
        the load ended by a stop (LoadFailed saying so). The load is never cancelled here."""
        closed = asyncio.ensure_future(self.closing.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({load, closed}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise OperationTimeout(
                f"{model.name} is still loading after {timeout}s; the load goes on",
                model=model.name,
                state=model.state.value,
            ) from None
        finally:
            closed.cancel()
        if load.cancelled():
            return LoadFailed(
                f"{model.name}: stopped while loading (the load was ended by a stop)",
                model=model.name,
                reason="stopped",
            )
        if load.done():
            return load.result()
        raise OperationFailed(
            f"modeld is stopping: no longer waiting for {model.name} to load",
            model=model.name,
            state=model.state.value,
            reason="shutting_down",
        )

    def runtime(self, model: Model) -> Runtime:
        """The runtime a model's backend runs in."""
        return self.runtimes[model.config.runtime]

    def seen_runtime(self, kind: str, error: str | None) -> None:
        """A runtime answered (error None) or did not: shown in `status`."""
        if self.runtime_errors.get(kind) != error:
            self.runtime_errors[kind] = error
            self.registry.revision.bump()

    async def inspect(self, model: Model) -> BackendStatus:
        """What its runtime says of its backend; whether the runtime answered is noted for
        `status` (RuntimeUnavailable is raised after noting it)."""
        kind = model.config.runtime
        try:
            backend = await self.runtime(model).inspect(model.config)
        except RuntimeUnavailable as exc:
            self.seen_runtime(kind, exc.message)
            raise
        self.seen_runtime(kind, None)
        return backend

    async def check_runtime(self, model: Model) -> None:
        """Fail with RuntimeUnavailable before changing anything if the engine is down
        (an adapter's: its base's)."""
        await self.inspect(self.loras.base_of(model) if model.config.base else model)

    def begin_loading(
        self, model: Model, reason: str, backend: BackendStatus | None = None
    ) -> None:
        """Watch a backend modeld did not start (found running, or awake again) to health;
        how long that takes says nothing about how long a load takes."""
        model.begin_watch(reason, backend)
        model.watching(
            asyncio.create_task(self._watch_load(model, timed=False), name=f"load-{model.name}")
        )

    async def start_model(self, model: Model) -> None:
        """Start the backend and begin watching its load (the caller waits on
        model.load_task); an adapter's is its load into its base."""
        if model.config.base:
            self.loras.start(model)
            return
        model.begin_start()
        try:
            if model.config.socket_path is not None:
                # Made (or checked) before the backend binds there: only the gateway's
                # group may reach it.
                await asyncio.to_thread(
                    prepare_backend_socket, model.config, self.registry.config.daemon.socket_group
                )
            model.started(await self.runtime(model).start(model.config))
        except ModeldError as exc:
            model.failed("start failed", Failure(exc.message))
            raise
        except Exception as exc:
            # Whatever goes wrong, the model must not be left `loading` with no load.
            log.exception("runtime.start_crashed", model=model.name)
            model.failed("start failed", Failure(repr(exc)))
            raise LoadFailed(
                f"{model.name}: start failed: {exc!r}", model=model.name, reason=repr(exc)
            ) from exc
        model.watching(
            asyncio.create_task(self._watch_load(model, timed=True), name=f"load-{model.name}")
        )

    async def stop_model(self, model: Model, reason: str) -> None:
        """End its load if any, stop its backend, note the memory it is releasing."""
        if model.load_task is not None and not model.load_task.done():
            model.load_task.cancel()
            await asyncio.wait({model.load_task})
        model.watching(None)
        if model.state is State.STOPPED:
            return
        if model.config.base:
            await self.loras.stop(model, reason)
            if model.unmanaged:
                self.registry.forget(model)
            return
        reading = self.ledger.reading
        releasing = None
        if reading is not None:
            held, _ = model.held(reading)
            until = time.monotonic() + self.registry.config.daemon.memory_release_timeout_s
            releasing = (held, self.ledger.unattributed(reading), until)
        model.stopping(reason, releasing)
        try:
            await self.runtime(model).stop(model.config)
        except Exception as exc:
            # Never left `stopping`: a stop that failed, for any reason, says so.
            if not isinstance(exc, ModeldError):
                log.exception("runtime.stop_crashed", model=model.name)
                exc = OperationFailed(
                    f"{model.name}: stop failed: {exc!r}", model=model.name, reason=repr(exc)
                )
            model.failed("stop failed", Failure(f"stop failed: {exc.message}"))
            raise exc from None
        model.stopped(reason)
        if model.unmanaged:
            # Removed from the config by a reload: once stopped, it is forgotten.
            self.registry.forget(model)

    async def measured(self) -> None:
        """A backend now answers: what the models hold is what the driver measures now."""
        with contextlib.suppress(GpuUnavailable):
            await self.ledger.read(self.registry.models.values())  # its listeners learn from it

    async def _watch_load(self, model: Model, timed: bool) -> ModeldError | None:
        """Race health against the backend's exit and the load deadline; record the outcome,
        and (`timed`: a load modeld started) how long it took."""
        started = model.loading.started or time.monotonic()
        try:
            await await_ready(
                model.config,
                self.runtime(model),
                self.vllm,
                self.registry.config.daemon.health_poll_interval_s,
                model.saw_health,
            )
            asleep = await self.vllm.says_asleep(model.config)
            # Trusted once it answers a token, not when /health says 200 (probes.py).
            if not asleep and (refused := await probe(self.vllm, model)) is not None:
                raise LoadFailed(refused.message, model=model.name, reason="not_answering")
        except Exception as exc:
            failure = exc if isinstance(exc, ModeldError) else _crashed(model, exc)
            # Nothing half-loaded may keep GPU memory: stop it (a no-op once it exited).
            try:
                await self.runtime(model).stop(model.config)
            except Exception:
                log.exception("load.stop_after_failure_failed", model=model.name)
            lines = tuple(failure.data.get("last_lines", ()))
            why = Failure(failure.message, failure.data.get("exit_code"), lines)
            model.failed("load failed", why)
            return failure
        load_s = time.monotonic() - started
        if asleep:
            # Found at startup (or woken and parked again behind modeld's back) asleep.
            model.found_asleep()
            return None
        model.became_running("healthy", load_s if timed else None)
        # Its memory is now what the driver measures: refresh what `status` shows.
        await self.measured()
        return None


def _crashed(model: Model, exc: Exception) -> LoadFailed:
    """An unexpected error while watching a load, as the load's failure."""
    log.error("load.watch_crashed", model=model.name, error=repr(exc))
    return LoadFailed(f"{model.name}: load failed: {exc!r}", model=model.name, reason=repr(exc))
