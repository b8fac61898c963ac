"""`status`, `gpu` and `models` (wire/status.py) from the Models and the last GPU
reading: the seed's `status` and `gpu` shapes, and more.

Pure functions of memory: `status` never does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from modeld.adapters.gpu.base import GpuReading
from modeld.adapters.hfcache import human_size
from modeld.core.gpu_health import DeviceHealth
from modeld.core.lora import lora_settings
from modeld.core.memory import model_need
from modeld.core.states import ACTIVE, State
from modeld.engine.facts import device_totals
from modeld.engine.model import Model
from modeld.wire.status import (
    Activity,
    Device,
    Download,
    Failure,
    GpuProcess,
    GpuStatus,
    ModelInfo,
    ModelStatus,
    Parked,
    RestartStatus,
    RuntimeStatus,
)


def iso(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def model_view(model: Model, reading: GpuReading | None, now: float) -> ModelStatus:
    """One model in the seed's `status` fields, plus state time, failure and sources
    (`now`: the monotonic clock, for idle time)."""
    config = model.config
    need = model.need(device_totals(reading))
    used_gb: float | None = None
    used_source: str | None = None
    per_device: dict[int, float] = {}
    if model.state in ACTIVE:
        per_device, source = model.held(reading)
        used_gb = round(sum(per_device.values()), 1)
        used_source = source.value
    failure = model.status.failure
    return ModelStatus(
        status=model.state.value,
        since=iso(model.status.since),
        size_gb=config.size_gb,
        description=config.description,
        aliases=list(config.aliases),
        estimated_load_time_seconds=round(model.load_estimate_s(), 1),
        estimated_load_time_source="learned" if model.loading.learned_s else "configured",
        gpu_memory_used_gb=used_gb,
        gpu_memory_source=used_source,
        gpu_memory_per_device_gb={str(d): round(gb, 2) for d, gb in per_device.items()},
        gpu_memory_required_gb=round(need.total_gb, 1),
        gpu_memory_required_source=need.source.value,
        gpu_memory_over_plan_gb=model.memory.over_plan_gb,
        downloaded_size=human_size(model.download.bytes) if model.download else None,
        download=(
            Download(
                bytes=model.download.bytes,
                complete=model.download.complete,
                reason=model.download.reason,
            )
            if model.download
            else None
        ),
        # While it loads, /health is refused by design: "loading", not "unreachable".
        health="loading" if model.state is State.LOADING else model.health.value,
        failure=(
            Failure(
                reason=failure.reason,
                exit_code=failure.exit_code,
                last_lines=list(failure.last_lines),
            )
            if failure
            else None
        ),
        gpus=list(config.gpus),
        pinned=config.pinned,
        sleep_mode=config.sleep_mode,
        parked=(
            Parked(
                ram_gb=round(config.parked_ram_gb, 1),
                estimated_wake_seconds=round(model.wake_estimate()[0], 2),
                wake_source=model.wake_estimate()[1],
            )
            if model.state is State.SLEEPING
            else None
        ),
        last_wake_seconds=round(model.sleep.last_wake_s, 2) if model.sleep.last_wake_s else None,
        wake_fallback=model.sleep.fallback,
        idle_unload_after_s=config.idle_unload_after_s,
        idle_seconds=(
            round(max(0.0, now - model.usage.last_active), 1)
            if model.state is State.RUNNING and config.idle_unload_after_s
            else None
        ),
        runtime=config.runtime,
        endpoint=config.endpoint,
        activity=_activity(model),
        last_load_seconds=round(model.loading.last_s, 2) if model.loading.last_s else None,
        restart=RestartStatus(
            policy=config.restart,
            attempts=model.restarts.attempts,
            max_retries=config.restart_max_retries,
            next_attempt_at=iso(model.restarts.at) if model.restarts.at else None,
            gave_up=model.restarts.gave_up,
        ),
        unmanaged=model.unmanaged,
        leases=model.usage.leases,
        waiting=model.usage.waiting,
        config_pending=model.pending_config is not None,
        backend_pid=model.backend.pid if model.backend else None,
        container_id=model.backend.id if model.backend else None,
        base=config.base,
        adapters=list(config.adapters),
        adapter_slots=(lora_settings(config.command or []).capacity if config.adapters else None),
    )


def _mb(gb: float) -> int:
    return round(gb * 1024)


def gpu_view(
    reading: GpuReading | None,
    backend: str,
    error: str | None,
    health: Mapping[int, DeviceHealth],
) -> GpuStatus:
    """The seed's `gpu` block summed over devices, with a `devices` list, each device's
    health, and freshness (a reading kept after the driver failed is stale)."""
    devices = reading.devices if reading else ()
    total = sum(d.total_gb for d in devices)
    used = sum(d.used_gb for d in devices)
    free = sum(d.free_gb for d in devices)
    return GpuStatus(
        used_mb=_mb(used),
        total_mb=_mb(total),
        available_mb=_mb(free),
        used_gb=round(used, 2),
        total_gb=round(total, 2),
        available_gb=round(free, 2),
        devices=[
            Device(
                index=d.index,
                name=d.name,
                total_gb=round(d.total_gb, 2),
                used_gb=round(d.used_gb, 2),
                free_gb=round(d.free_gb, 2),
                total_mb=_mb(d.total_gb),
                used_mb=_mb(d.used_gb),
                free_mb=_mb(d.free_gb),
                # Held by processes that belong to no model (only known with per-process data).
                unmanaged_gb=(
                    round(
                        max(
                            0.0,
                            d.used_gb
                            - sum(m.get(d.index, 0.0) for m in reading.per_model.values()),
                        ),
                        2,
                    )
                    if reading and reading.per_process
                    else None
                ),
                health=health.get(d.index, DeviceHealth()).state.value,
                health_reasons=list(health.get(d.index, DeviceHealth()).reasons),
            )
            for d in devices
        ],
        processes=[
            GpuProcess(
                pid=p.pid,
                device=p.device,
                used_gb=round(p.used_gb, 2),
                model=p.model,
                unmanaged=p.model is None,
            )
            for p in (reading.processes if reading else ())
        ],
        backend=backend,
        read_at=iso(reading.taken_at) if reading else None,
        per_process=reading.per_process if reading else False,
        stale=error is not None,
        error=error,
        source="measured",
    )


def models_view(models: Iterable[Model], reading: GpuReading | None) -> list[ModelInfo]:
    """The configured models and the memory each will need, with the figure's source."""
    totals = device_totals(reading)
    views = []
    for model in models:
        if model.unmanaged:
            continue
        config = model.pending_config or model.config
        need = model_need(config, totals, None if model.pending_config else model.memory.learned_gb)
        views.append(
            ModelInfo(
                name=config.name,
                runtime=config.runtime,
                container=config.container_name if config.runtime == "docker" else None,
                endpoint=config.endpoint,
                size_gb=config.size_gb,
                hf_path=config.hf_path,
                description=config.description,
                aliases=list(config.aliases),
                load_time_seconds=config.load_time_seconds,
                gpus=list(config.gpus),
                pinned=config.pinned,
                gpu_memory_required_gb={str(d): round(gb, 2) for d, gb in need.per_device.items()},
                gpu_memory_required_source=need.source.value,
                load_timeout_s=config.load_timeout_s,
                base=config.base,
                adapters=list(config.adapters),
            )
        )
    return views


def runtime_view(errors: Mapping[str, str | None]) -> dict[str, RuntimeStatus]:
    """Each runtime in use and whether it answers."""
    return {name: RuntimeStatus(available=err is None, error=err) for name, err in errors.items()}


def _activity(model: Model) -> Activity | None:
    """What a running model is doing, as its backend's /metrics last said."""
    rates = model.usage.rates
    if model.state is not State.RUNNING or rates is None:
        return None
    return Activity(
        in_flight=rates.in_flight,
        waiting=rates.waiting,
        kv_cache_usage=rates.kv_cache,
        requests_per_s=rates.requests_per_s,
        tokens_per_s=rates.tokens_per_s,
    )
