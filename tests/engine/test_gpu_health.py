"""Device health from what the driver reports: a critical Xid or uncorrected ECC errors
make a device unusable (no load is placed on it, the refusal says why and what to do),
pending page retirement makes it degraded (loads still go there); status, events and
metrics say so; only an operator's reset clears it. Against the simulated GPU, which
reports faults as NVML does."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from modeld.core.errors import GpuUnusable, InsufficientMemory, UnknownDevice
from modeld.engine.engine import Engine
from modeld.engine.metrics import Metrics
from modeld.wire.events import GpuHealthChanged
from tests.support import EngineFactory, make_config, next_of

MODELS: dict[str, dict[str, Any]] = {
    "a": {"gpu_memory_gb": 30},
    "b": {"gpu_memory_gb": 30, "gpus": [1]},
}


def health(engine: Engine, device: int) -> tuple[str, list[str]]:
    """A device's health as `status` shows it."""
    shown = engine.view.status().gpu.devices[device]
    return shown.health, shown.health_reasons


async def test_an_xid_makes_a_device_unusable_until_an_operator_resets_it(
    engines: EngineFactory,
) -> None:
    """Xid 79 on GPU 0, a model running there: the next reading makes GPU 0 unusable,
    the event names the model on it; a switch to a model on GPU 0 is refused (nothing
    started) while GPU 1 still takes loads; the operator's reset makes it ok again."""
    engine, runtime, gpu = await engines(make_config(MODELS, [80, 80]))
    await engine.models.switch("a")
    events = engine.events.subscribe()
    gpu.xid(0, 79)
    await engine.poll_once()
    changed = await next_of(events, "gpu.health")
    assert isinstance(changed, GpuHealthChanged)
    assert (changed.device, changed.to_health, changed.models) == (0, "unusable", ["a"])
    assert health(engine, 0) == ("unusable", ["Xid 79: GPU has fallen off the bus"])
    assert health(engine, 1) == ("ok", [])
    metrics = Metrics()
    metrics.watch(engine.view.status)
    scraped = generate_latest(metrics.registry).decode()
    assert 'modeld_gpu_health{device="0",health="unusable"} 1.0' in scraped
    assert 'modeld_gpu_health{device="1",health="ok"} 1.0' in scraped
    await engine.models.stop("a")
    with pytest.raises(GpuUnusable, match=r"GPU 0 is unusable \(Xid 79.*reset-health 0"):
        await engine.models.switch("a")
    assert runtime.starts("a") == 1
    assert (await engine.models.switch("b")).state == "running"
    await engine.reset_gpu_health(0)
    assert health(engine, 0) == ("ok", [])
    assert (await engine.models.switch("a")).state == "running"


async def test_uncorrected_ecc_errors_count_from_the_last_reset(engines: EngineFactory) -> None:
    """Two double-bit ECC errors: unusable; reset: ok, and those two are not counted
    again at the next reading; one more: unusable again."""
    engine, _, gpu = await engines(make_config(MODELS, [80, 80]))
    gpu.ecc_error(1, 2)
    await engine.poll_once()
    assert health(engine, 1) == ("unusable", ["2 uncorrected ECC errors"])
    await engine.reset_gpu_health(1)
    await engine.poll_once()
    assert health(engine, 1) == ("ok", [])
    gpu.ecc_error(1)
    await engine.poll_once()
    assert health(engine, 1) == ("unusable", ["3 uncorrected ECC errors"])


async def test_pending_page_retirement_degrades_but_loads_still_go_there(
    engines: EngineFactory,
) -> None:
    """Retired pages waiting for a reset: degraded, said with why; a load on it still
    runs; an unknown device cannot be reset."""
    engine, _, gpu = await engines(make_config(MODELS, [80, 80]))
    gpu.retirement_pending(0)
    await engine.poll_once()
    assert health(engine, 0) == ("degraded", ["retired pages or remapped rows wait for a reset"])
    assert (await engine.models.switch("a")).state == "running"
    with pytest.raises(UnknownDevice):
        await engine.reset_gpu_health(7)


async def test_memory_held_by_a_foreign_process_is_never_promised_and_is_named(
    engines: EngineFactory,
) -> None:
    """A process modeld does not manage holds 60 GB of GPU 0: a model that needs 30 GB
    is refused there (not promised memory that is taken), and the refusal names the
    process; once it lets go, the model loads."""
    engine, _, gpu = await engines(make_config({"a": {"gpu_memory_gb": 30}}, [80]))
    gpu.hold_foreign(4242, 0, 60.0)
    await engine.poll_once()
    with pytest.raises(InsufficientMemory, match=r"GPU 0: 60\.0 GB held by pid 4242, not"):
        await engine.models.switch("a")
    gpu.hold_foreign(4242, 0, 0)
    await engine.poll_once()
    assert (await engine.models.switch("a")).state == "running"
