"""Measured memory: learned peaks preferred by plans and kept across restarts; models
that outgrow their configured figure reported; plans per device on multi-GPU hosts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from structlog.testing import capture_logs

from modeld.adapters.gpu.base import BackendRef, GpuReading
from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.core.config import Config
from modeld.core.states import State
from modeld.engine.engine import Engine
from modeld.testing.fakes import FakeRuntime
from tests.support import EngineFactory, make_config, start_over, state_of


class HungryGpu(SimulatedGpu):
    """A simulated GPU on which `alpha` really takes 40 GB, whatever its config says."""

    async def read(self, backends: Sequence[BackendRef]) -> GpuReading:
        """Read, with alpha's true appetite."""
        grown = [
            replace(ref, expected_gb={d: 40.0 for d in ref.expected_gb})
            if ref.model == "alpha"
            else ref
            for ref in backends
        ]
        return await super().read(grown)


async def started(config: Config) -> tuple[Engine, FakeRuntime]:
    """An Engine on the hungry GPU."""
    runtime = FakeRuntime()
    gpu = HungryGpu(config.gpu, alive=runtime.alive)
    engine = await start_over(config, runtime, gpu)
    return engine, runtime


async def test_measured_peak_is_reported_learned_and_preferred() -> None:
    """alpha is configured at 30 GB but takes 40: reported, remembered, then planned at 40."""
    config = make_config({"alpha": {"gpu_memory_gb": 30}, "beta": {"gpu_memory_gb": 25}}, [60])
    first, _ = await started(config)
    try:
        await first.models.switch("beta")
        with capture_logs() as logs:
            await first.models.switch("alpha")
        view = first.view.status().models["alpha"]
        assert view.gpu_memory_used_gb == 40.0
        assert view.gpu_memory_source == "measured"
        assert view.gpu_memory_over_plan_gb == 10.0
        assert any(e["event"] == "memory.over_plan" and e["model"] == "alpha" for e in logs)
        assert view.gpu_memory_required_gb == 40.0
        assert view.gpu_memory_required_source == "learned"
    finally:
        await first.shutdown()

    second, _ = await started(config)
    try:
        view = second.view.status().models["alpha"]
        assert (view.gpu_memory_required_gb, view.gpu_memory_required_source) == (
            40.0,
            "learned",
        )
        await second.models.switch("beta")
        # At 30 GB alpha would fit beside beta (55 of 60); at its measured 40 it does not.
        result = await second.models.switch("alpha")
        assert result.unloaded_models == ["beta"]
        assert result.memory_info is not None and result.memory_info.source == "learned"
    finally:
        await second.shutdown()


async def test_new_settings_forget_the_old_peak() -> None:
    """A peak learned under other settings is not applied to the new ones."""
    config = make_config({"alpha": {"gpu_memory_gb": 30}}, [70])
    first, _ = await started(config)
    await first.models.switch("alpha")
    await first.shutdown()
    changed = config.model_copy(
        update={
            "models": {"alpha": config.models["alpha"].model_copy(update={"gpu_memory_gb": 35.0})}
        }
    )
    second, _ = await started(changed)
    try:
        view = second.view.status().models["alpha"]
        assert (view.gpu_memory_required_gb, view.gpu_memory_required_source) == (
            35.0,
            "configured",
        )
    finally:
        await second.shutdown()


async def test_two_gpu_plan_stops_only_what_frees_the_needed_device(
    engines: EngineFactory,
) -> None:
    """A tensor-parallel model on GPUs 0 and 1 stops the model crowding GPU 1 only."""
    models = {
        "on0": {"gpus": [0], "gpu_memory_gb": 30},
        "on1": {"gpus": [1], "gpu_memory_gb": 50},
        "tp": {"gpus": [0, 1], "gpu_memory_gb": 40},
    }
    engine, _, _ = await engines(make_config(models, [80, 80]))
    await engine.models.switch("on0")
    await engine.models.switch("on1")
    result = await engine.models.switch("tp")
    assert result.unloaded_models == ["on1"]
    assert result.memory_info is not None and result.memory_info.per_device is not None
    assert set(result.memory_info.per_device) == {"0", "1"}
    assert state_of(engine, "on0") is State.RUNNING
    gpu = engine.view.gpu().devices
    assert [d.used_gb for d in gpu] == [70.0, 40.0]


async def test_four_gpu_host_leaves_other_devices_alone(engines: EngineFactory) -> None:
    """On four GPUs, a model on GPUs 2 and 3 never stops models living on 0 and 1."""
    models = {
        "big0": {"gpus": [0], "gpu_memory_gb": 70},
        "big1": {"gpus": [1], "gpu_memory_gb": 70},
        "on23": {"gpus": [2, 3], "gpu_memory_gb": 60},
        "also23": {"gpus": [2, 3], "gpu_memory_gb": 60},
    }
    engine, _, _ = await engines(make_config(models, [80, 80, 80, 80]))
    for name in ("big0", "big1", "on23"):
        await engine.models.switch(name)
    result = await engine.models.switch("also23")
    assert result.unloaded_models == ["on23"]
    assert state_of(engine, "big0") is State.RUNNING
    assert state_of(engine, "big1") is State.RUNNING
