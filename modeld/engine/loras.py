"""Adapters' loads: a LoRA adapter's "backend" is its load into its base's vLLM
(`/v1/load_lora_adapter`), its stop an unload. An adapter follows its base: when the
base leaves `running` (stopped, parked, failed, lost) its adapters are stopped with it,
and when a base comes up the adapters vLLM already lists in it (a daemon restarted
beside a running base) are adopted as running.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from modeld.adapters.hfcache import adapter_dir, hf_cache_dir
from modeld.adapters.vllm import Health, VllmClient
from modeld.core.errors import AdapterFailed, LoadFailed, ModeldError
from modeld.core.lora import lora_settings
from modeld.core.states import Failure, State
from modeld.engine.model import Model, Transition
from modeld.engine.registry import Registry

log = structlog.get_logger("modeld.engine.loras")

# A base in these states may be carrying adapters; anything else takes them down.
CARRYING = frozenset({State.LOADING, State.RUNNING})
# What a base leaving `running` means for its adapters, in words.
FATES = {State.STOPPING: "stopped", State.SLEEPING: "parked", State.FAILED: "failed"}
# An unload that does not answer within this long is taken as done: the base is what
# holds the adapter, and a base that does not answer will be found failed anyway.
UNLOAD_TIMEOUT_S = 10.0


class LoraLoads:
    """Loads and unloads adapters in their bases, and keeps them in step with them."""

    def __init__(self, registry: Registry, vllm: VllmClient) -> None:
        self._registry = registry
        self._vllm = vllm
        self._adopting: set[asyncio.Task[None]] = set()

    def base_of(self, adapter: Model) -> Model:
        """The Model an adapter runs in (UnknownModel if a reload removed it)."""
        return self._registry.model(adapter.config.base or "")

    def adapters_of(self, base: Model) -> list[Model]:
        """The adapters naming `base` now (read from theirs: a running base's own config
        may predate a reload that added one)."""
        return [m for m in self._registry.models.values() if m.config.base == base.name]

    def capacity(self, base: Model) -> int:
        """How many adapters the base may hold loaded at once (vLLM's CPU-side cache)."""
        return lora_settings(base.config.command or []).capacity

    def start(self, adapter: Model) -> None:
        """Begin loading `adapter` into its base (the caller waits on its load_task):
        `loading` while the base loads too, `running` once vLLM has it."""
        base = self.base_of(adapter)
        adapter.begin_start()
        adapter.watching(
            asyncio.create_task(self._load(adapter, base), name=f"load-{adapter.name}")
        )

    async def _load(self, adapter: Model, base: Model) -> ModeldError | None:
        if base.state is State.LOADING and base.load_task is not None:
            # Shared with whoever else waits on the base (asyncio.wait never cancels it).
            await asyncio.wait({base.load_task})
        if base.state is not State.RUNNING:
            why = f"its base {base.name} is {base.state.value}"
            adapter.failed("load failed", Failure(why))
            return LoadFailed(f"{adapter.name}: {why}", model=adapter.name, reason="base_down")
        started = time.monotonic()
        try:
            path = await asyncio.to_thread(self._path, adapter)
            if path is None:
                raise AdapterFailed(
                    f"{adapter.config.adapter} is not a directory and not in the Hugging "
                    "Face cache",
                    model=adapter.name,
                )
            await self._vllm.load_adapter(
                base.config.endpoint, adapter.name, path, adapter.config.load_timeout_s
            )
        except ModeldError as exc:
            # The base keeps serving: only the adapter failed, with vLLM's reason.
            adapter.failed("load failed", Failure(exc.message))
            return LoadFailed(
                f"{adapter.name}: {exc.message}", model=adapter.name, reason=exc.message
            )
        if base.state is not State.RUNNING:
            # The base left while vLLM took the adapter: it went with it.
            why = f"its base {base.name} is {base.state.value}"
            adapter.failed("load failed", Failure(why))
            return LoadFailed(f"{adapter.name}: {why}", model=adapter.name, reason="base_down")
        adapter.saw_health(Health.HEALTHY)  # vLLM took it: it answers as its base does
        adapter.became_running(f"loaded in {base.name}", time.monotonic() - started)
        return None

    def _path(self, adapter: Model) -> str | None:
        where = adapter_dir(
            hf_cache_dir(self._registry.config.daemon.hf_cache_dir), adapter.config.adapter or ""
        )
        return str(where) if where is not None else None

    async def stop(self, adapter: Model, reason: str) -> None:
        """Unload it from its base (a base that does not have it any more is fine)."""
        base = self._registry.models.get(adapter.config.base or "")
        adapter.stopping(reason, None)
        if base is not None and base.state is State.RUNNING:
            try:
                await self._vllm.unload_adapter(
                    base.config.endpoint, adapter.name, UNLOAD_TIMEOUT_S
                )
            except AdapterFailed as exc:
                log.warning("adapter.unload_failed", model=adapter.name, error=exc.message)
        adapter.stopped(reason)

    def on_transition(self, event: Transition) -> None:
        """A base left `running` or `loading`: its adapters go with it. A base came up:
        adopt what vLLM already serves in it."""
        base = event.model
        adapters = self.adapters_of(base)
        if not adapters:
            return
        if event.new not in CARRYING:
            fate = FATES.get(event.new, event.new.value)
            for adapter in adapters:
                self._taken_down(adapter, f"{base.name} {fate}")
        elif event.new is State.RUNNING:
            task = asyncio.create_task(self._adopt(base), name=f"adopt-{base.name}")
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    def _taken_down(self, adapter: Model, why: str) -> None:
        # A loading adapter's own load sees its base gone (it waits on the base's load,
        # or its call to the base fails) and says so to whoever waits on it.
        if adapter.state is State.RUNNING:
            adapter.stopping(f"its base {why}", None)
            adapter.stopped(f"its base {why}")

    async def _adopt(self, base: Model) -> None:
        try:
            listed = await self._vllm.adapters(base.config.endpoint)
        except AdapterFailed as exc:
            log.warning("adapter.listing_failed", model=base.name, error=exc.message)
            return
        if base.state is not State.RUNNING:
            return
        for adapter in self.adapters_of(base):
            if adapter.name in listed and adapter.state is State.STOPPED:
                adapter.begin_watch(f"found loaded in {base.name}")
                adapter.saw_health(Health.HEALTHY)
                adapter.became_running(f"found loaded in {base.name}")

    async def close(self) -> None:
        """Stop adopting (the daemon stops)."""
        for task in list(self._adopting):
            task.cancel()
        await asyncio.gather(*self._adopting, return_exceptions=True)
