"""`status`, `gpu` and `models` as they go over the wire: the engine builds them once
per change (engine/view.py), the daemon sends them, and the CLI, the gateway and the
page read their fields. docs/api.schema.json is generated from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Runtime = Literal["docker", "process"]
ModelState = Literal["stopped", "loading", "running", "stopping", "sleeping", "failed"]


class _Wire(BaseModel):
    # Read, never changed: a view is rebuilt whole when something it shows changes.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Failure(_Wire):
    """Why a model failed."""

    reason: str
    exit_code: int | None
    last_lines: list[str]


class Download(_Wire):
    """What the HF cache holds of a model's weights."""

    bytes: int
    complete: bool
    reason: str | None


class Parked(_Wire):
    """A parked model: the host RAM its weights take, and its expected wake."""

    ram_gb: float
    estimated_wake_seconds: float
    wake_source: str


class RestartStatus(_Wire):
    """restart = "on-failure" bookkeeping."""

    policy: str
    attempts: int
    max_retries: int
    next_attempt_at: str | None
    gave_up: bool


class Activity(_Wire):
    """A running model's work, from its backend's /metrics (per second: None until two
    readings)."""

    in_flight: float
    waiting: float
    kv_cache_usage: float
    requests_per_s: float | None
    tokens_per_s: float | None


class ModelStatus(_Wire):
    """One model in `status`: the seed's fields, then state time, failure and sources."""

    status: ModelState
    since: str
    size_gb: float | None
    description: str
    aliases: list[str]
    estimated_load_time_seconds: float
    estimated_load_time_source: Literal["learned", "configured"]
    gpu_memory_used_gb: float | None
    gpu_memory_source: str | None
    gpu_memory_per_device_gb: dict[str, float]
    gpu_memory_required_gb: float
    gpu_memory_required_source: str
    gpu_memory_over_plan_gb: float | None
    downloaded_size: str | None
    download: Download | None
    health: str
    failure: Failure | None
    gpus: list[int]
    pinned: bool
    sleep_mode: bool
    parked: Parked | None
    last_wake_seconds: float | None
    wake_fallback: str | None
    idle_unload_after_s: float | None
    idle_seconds: float | None
    runtime: Runtime
    endpoint: str
    last_load_seconds: float | None
    restart: RestartStatus
    unmanaged: bool
    leases: int
    waiting: int
    activity: Activity | None
    config_pending: bool
    backend_pid: int | None
    container_id: str | None
    # A LoRA adapter: the model it runs in; a base: its adapters (docs/adapters.md),
    # and how many it may hold loaded at once (None: it takes none).
    base: str | None
    adapters: list[str]
    adapter_slots: int | None


class Device(_Wire):
    """One GPU."""

    index: int
    name: str
    total_gb: float
    used_gb: float
    free_gb: float
    total_mb: int
    used_mb: int
    free_mb: int
    unmanaged_gb: float | None
    # ok, degraded or unusable (nothing is loaded there), and why (docs/gpu-health.md).
    health: Literal["ok", "degraded", "unusable"]
    health_reasons: list[str]


class GpuProcess(_Wire):
    """One process holding GPU memory."""

    pid: int
    device: int
    used_gb: float
    model: str | None
    unmanaged: bool


class GpuStatus(_Wire):
    """`gpu`: the seed's block summed over devices, then devices and freshness."""

    used_mb: int
    total_mb: int
    available_mb: int
    used_gb: float
    total_gb: float
    available_gb: float
    devices: list[Device]
    processes: list[GpuProcess]
    backend: str
    read_at: str | None
    per_process: bool
    stale: bool
    error: str | None
    source: Literal["measured"]


class Parking(_Wire):
    """Host RAM for parked models."""

    ram_budget_gb: float
    ram_used_gb: float
    ram_free_gb: float


class RuntimeStatus(_Wire):
    """Whether a runtime answers."""

    available: bool
    error: str | None


class Status(_Wire):
    """`status`: every model, the GPU, parking, runtimes, and how busy the daemon is."""

    models: dict[str, ModelStatus]
    gpu: GpuStatus
    parking: Parking
    runtimes: dict[str, RuntimeStatus]
    eviction_policy: str
    busy: bool
    in_flight: int
    subscribers: int


class ModelInfo(_Wire):
    """One configured model in `models`."""

    name: str
    runtime: Runtime
    container: str | None
    endpoint: str
    size_gb: float | None
    hf_path: str | None
    description: str
    aliases: list[str]
    load_time_seconds: float
    gpus: list[int]
    pinned: bool
    gpu_memory_required_gb: dict[str, float]
    gpu_memory_required_source: str
    load_timeout_s: float
    base: str | None
    adapters: list[str]


def without_backend_output(status: Status) -> Status:
    """`status` for those who may not read backends' output (the daemon's read-only
    peers, the gateway's inference keys): failures' last lines emptied, the field kept."""
    models = {
        name: model.model_copy(
            update={"failure": model.failure.model_copy(update={"last_lines": []})}
        )
        if model.failure is not None and model.failure.last_lines
        else model
        for name, model in status.models.items()
    }
    return status.model_copy(update={"models": models})
