"""The monitor: every poll_interval_s, look at what changed behind modeld's back.

It only reads (the GPU, each backend's runtime state, `/health`, `/is_sleeping`,
`/metrics`, the HF cache) and reports what it saw to the Observations
(observations.py), the one door through which those readings change models. Each
report carries the model's generation from before the look: an observation made
before another change is dropped rather than applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from modeld.adapters.hfcache import Download, download_state, hf_cache_dir, signature
from modeld.adapters.runtime.base import BackendState, BackendStatus
from modeld.adapters.vllm import Health, VllmClient
from modeld.core.config import DaemonConfig
from modeld.core.errors import GpuUnavailable, ModeldError, RuntimeUnavailable
from modeld.core.states import State
from modeld.engine.ledger import GpuLedger
from modeld.engine.model import Model
from modeld.engine.observations import Observations
from modeld.engine.probes import probe, probe_due

log = structlog.get_logger("modeld.engine.monitor")

# Loading and stopping models are watched by the operation that moves them.
WATCHED = frozenset({State.RUNNING, State.SLEEPING, State.STOPPED, State.FAILED})


class Monitor:
    """Polls the world and reports to the Engine; never changes a model itself."""

    def __init__(
        self,
        observations: Observations,
        ledger: GpuLedger,
        vllm: VllmClient,
        settings: Callable[[], DaemonConfig],
    ) -> None:
        self._observations = observations
        self._ledger = ledger
        self._vllm = vllm
        self._settings = settings
        self._download_marks: dict[str, tuple[float, ...] | None] = {}

    async def run(self) -> None:
        """Poll every poll_interval_s until cancelled; no single bad pass ends it."""
        while True:
            await asyncio.sleep(self._settings().poll_interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("monitor.poll_failed")

    async def poll_once(self) -> None:
        """One pass: the GPU, then each model's backend, then the HF cache."""
        models = self._observations.models()
        with contextlib.suppress(GpuUnavailable):
            self._observations.seen_memory(await self._ledger.read(models))
        await asyncio.gather(*(self._observe(r) for r in models if r.state in WATCHED))
        await self._scan_downloads(models)

    async def _observe(self, model: Model) -> None:
        generation = model.generation
        try:
            backend = await self._observations.inspect(model)
        except RuntimeUnavailable:
            return
        except ModeldError as exc:
            # E.g. a stranger's container under the model's name: nothing to adopt.
            log.debug("monitor.inspect_refused", model=model.name, error=exc.message)
            return
        if model.generation != generation:
            return
        if model.state in (State.RUNNING, State.SLEEPING):
            await self._observe_live(model, backend, generation)
        elif backend.state is BackendState.RUNNING:
            # Re-adopt a failed model only once it truly answers again: a token, not
            # /health alone (a hung engine's /health still says 200).
            if model.state is State.FAILED and not await self._answers(model):
                return
            self._observations.seen_running(model, generation, backend)

    async def _answers(self, model: Model) -> bool:
        """Whether a backend answers: /health 200 and its probe."""
        if await self._vllm.health(model.config.endpoint) is not Health.HEALTHY:
            return False
        return await probe(self._vllm, model) is None

    async def _observe_live(self, model: Model, backend: BackendStatus, generation: int) -> None:
        """A running or parked model: has it died, been parked or woken behind modeld's
        back, or gone idle?"""
        if backend.state is not BackendState.RUNNING:
            lines = await self._observations.runtime_for(model).logs(model.config)
            self._observations.seen_exit(model, generation, backend.exit_code, lines)
            return
        self._observations.seen_health(
            model, generation, await self._vllm.health(model.config.endpoint)
        )
        asleep = await self._vllm.says_asleep(model.config)
        if asleep is not None:
            self._observations.seen_asleep(model, generation, asleep)
        if model.generation == generation and model.state is State.RUNNING:
            activity = await self._vllm.activity(model.config.endpoint)
            self._observations.seen_activity(model, generation, activity)
        # Idle this long: does it still answer? (/health alone cannot say.)
        due = model.generation == generation and probe_due(model, time.monotonic())
        if due and (refused := await probe(self._vllm, model)) is not None:
            self._observations.seen_not_answering(model, generation, refused)

    async def _scan_downloads(self, models: list[Model]) -> None:
        """Refresh what the HF cache holds for each model, off the loop, only for models
        whose cache entry changed since the last look."""
        cache = hf_cache_dir(self._settings().hf_cache_dir)
        paths = {r.name: r.config.hf_path for r in models if r.config.hf_path}
        marks = dict(self._download_marks)

        def scan() -> dict[str, tuple[tuple[float, ...] | None, Download | None]]:
            found = {}
            for name, hf_path in paths.items():
                mark = signature(cache, hf_path)
                if mark is None or mark != marks.get(name):
                    found[name] = (mark, download_state(cache, hf_path))
            return found

        for name, (mark, state) in (await asyncio.to_thread(scan)).items():
            self._download_marks[name] = mark
            self._observations.seen_download(name, state)
