"""A fake runtime for tests and benchmarks: fake PIDs, but real in-process fake vLLM HTTP
servers (modeld.testing.fakevllm), so everything above the runtime speaks the real protocol."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from modeld.adapters.backendkeys import KEY_VARIABLE, launch_environment
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.base import BackendState, BackendStatus
from modeld.core.config import ModelConfig
from modeld.core.errors import LoadFailed
from modeld.core.lora import lora_settings
from modeld.testing.fakevllm import FakeVllm
from modeld.testing.fakevllm_lora import FakeLoras


@dataclass
class Behaviour:
    """How a fake backend behaves: load time, or an exit during load, or a start error."""

    load_seconds: float = 0.05
    exit_code: int | None = None
    start_error: str | None = None
    # Sleep mode (only with the model's sleep_mode): how long /sleep and /wake_up take,
    # and whether /wake_up fails.
    sleep_seconds: float = 0.02
    wake_seconds: float = 0.05
    wake_fails: bool = False
    # Its engine hangs from the start (/health 200, no token ever).
    hangs: bool = False
    # Its engine dies (the backend exits 1) on a prompt of more fake tokens than this.
    dies_over_tokens: int | None = None
    # Each wake leaves it answering wrong (its greedy first token changes).
    wakes_wrong: bool = False
    # Runtime LoRA loading (a base whose command enables it): how long a load takes.
    lora_load_seconds: float = 0.01


@dataclass
class _Backend:
    pid: int
    server: FakeVllm
    task: asyncio.Task[int]
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class FakeRuntime:
    """A Runtime for engine tests: fake PIDs, real HTTP health endpoints."""

    # It stands in for the process runtime: the models it runs are configured with
    # `runtime = "process"` (a config knows no other), and `status` lists it under it.
    name = "process"

    def __init__(self, gpu: SimulatedGpu | None = None) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.events: list[tuple[str, str]] = []
        self.free_at_start: dict[str, float] = {}
        self.gpu = gpu
        self._backends: dict[str, _Backend] = {}
        self._exit_codes: dict[str, int] = {}
        self._alive: set[int] = set()
        self._pids = itertools.count(4_000_000)

    def alive(self, pid: int) -> bool:
        """Liveness of a fake PID (handed to SimulatedGpu)."""
        return pid in self._alive

    def starts(self, model: str) -> int:
        """How many times `model` was started."""
        return self.events.count(("start", model))

    async def start(self, model: ModelConfig) -> BackendStatus:
        """Start an in-process fake vLLM on the model's endpoint port."""
        behaviour = self.behaviour.get(model.name, Behaviour())
        if behaviour.start_error:
            raise LoadFailed(f"{model.name}: {behaviour.start_error}", model=model.name)
        if self.gpu is not None:
            reading = await self.gpu.read([])
            self.free_at_start[model.name] = reading.devices[model.gpus[0]].free_gb
        self.events.append(("start", model.name))
        sock = model.socket_path
        port = urlparse(model.endpoint).port if sock is None else 0
        assert port is not None
        env = launch_environment(model)
        server = FakeVllm(
            model.served_model_name or model.name,
            port,
            uds=str(sock) if sock is not None else None,
            load_seconds=behaviour.load_seconds,
            sleep_mode=model.sleep_mode,
            dev_mode=env.get("VLLM_SERVER_DEV_MODE") == "1",
            api_key=env.get(KEY_VARIABLE),
            sleep_seconds=behaviour.sleep_seconds,
            wake_seconds=behaviour.wake_seconds,
            wake_fails=behaviour.wake_fails,
            loras=_loras(model, env, behaviour.lora_load_seconds),
        )
        server.engine_hung = behaviour.hangs
        server.faults.die_over_tokens = behaviour.dies_over_tokens
        server.faults.wakes_wrong = behaviour.wakes_wrong
        pid = next(self._pids)
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(server, behaviour, stop))
        self._backends[model.name] = _Backend(pid, server, task, stop)
        self._alive.add(pid)
        self._exit_codes.pop(model.name, None)
        return BackendStatus(BackendState.RUNNING, pid=pid)

    async def _run(self, server: FakeVllm, behaviour: Behaviour, stop: asyncio.Event) -> int:
        stopped = asyncio.create_task(stop.wait())
        try:
            if behaviour.exit_code is not None:
                await asyncio.wait({stopped}, timeout=behaviour.load_seconds)
                return 0 if stop.is_set() else behaviour.exit_code
            loading = asyncio.create_task(server.load())
            await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
            loading.cancel()
            died = asyncio.create_task(server.faults.died.wait())
            await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
            died.cancel()
            return 0 if stop.is_set() else 1  # its engine died: vLLM's server exits 1
        finally:
            stopped.cancel()
            await server.close()

    async def _ended(self, name: str) -> None:
        backend = self._backends.pop(name)
        self._exit_codes[name] = await backend.task
        self._alive.discard(backend.pid)

    async def stop(self, model: ModelConfig) -> None:
        """Stop the fake server; idempotent."""
        backend = self._backends.get(model.name)
        if backend is None:
            return
        self.events.append(("stop", model.name))
        backend.stop.set()
        await self._ended(model.name)

    async def kill_behind_back(self, name: str, exit_code: int = 0) -> None:
        """End a backend the way `docker stop` by hand would: modeld did not ask."""
        backend = self._backends[name]
        backend.stop.set()
        await self._ended(name)
        self._exit_codes[name] = exit_code

    def server(self, name: str) -> FakeVllm:
        """The fake vLLM server of a running backend."""
        return self._backends[name].server

    def engine_hangs(self, name: str, hung: bool = True) -> None:
        """Make its engine hang: `/health` still 200, no request answered (vLLM issue
        39863); `hung` False lets it answer again."""
        self._backends[name].server.engine_hung = hung

    def engine_dies(self, name: str) -> None:
        """Make `/health` answer 503, as vLLM does when its engine process died."""
        self._backends[name].server.engine_dead = True

    async def inspect(self, model: ModelConfig) -> BackendStatus:
        """RUNNING while the fake runs; EXITED with its code after."""
        backend = self._backends.get(model.name)
        if backend is not None and not backend.task.done():
            return BackendStatus(BackendState.RUNNING, pid=backend.pid)
        if backend is not None:
            await self._ended(model.name)
        if model.name in self._exit_codes:
            return BackendStatus(BackendState.EXITED, exit_code=self._exit_codes[model.name])
        return BackendStatus(BackendState.ABSENT)

    async def wait_exit(self, model: ModelConfig) -> BackendStatus:
        """Wait until the fake backend ends."""
        backend = self._backends.get(model.name)
        if backend is not None:
            code = await asyncio.shield(backend.task)
            if self._backends.get(model.name) is backend:
                await self._ended(model.name)
            return BackendStatus(BackendState.EXITED, exit_code=code)
        return BackendStatus(BackendState.EXITED, exit_code=self._exit_codes.get(model.name))

    async def logs(self, model: ModelConfig, lines: int = 20) -> list[str]:
        """A fixed last line, like a backend's log."""
        return [f"{model.name}: CUDA error: out of memory"]

    async def follow(self, model: ModelConfig, lines: int = 20) -> AsyncIterator[str]:
        """The fixed line, then nothing more until the fake backend ends."""
        yield (await self.logs(model, lines))[-1]
        backend = self._backends.get(model.name)
        if backend is not None:
            await asyncio.shield(backend.task)

    async def close(self) -> None:
        """Stop every fake backend."""
        for backend in list(self._backends.values()):
            backend.stop.set()
        for name in list(self._backends):
            await self._ended(name)


def _loras(model: ModelConfig, env: dict[str, str], seconds: float) -> FakeLoras | None:
    """Adapters at run time where vLLM would serve them: --enable-lora in the command and
    VLLM_ALLOW_RUNTIME_LORA_UPDATING in the environment."""
    settings = lora_settings(model.launch_command or [])
    updating = env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true")
    if not (settings.enabled and updating):
        return None
    return FakeLoras(model.served_model_name or model.name, settings.max_lora_rank, seconds)
