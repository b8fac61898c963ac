"""The shapes of the read-only answers (`status`, `gpu`, `models`, `ping`, `subscribe`,
a followed `logs`), for docs/api.schema.json. The engine's view builds these answers
from memory as JSON (it is asked thousands of times a second); a test checks that what
it builds validates against these models, so the schema cannot drift from the answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from modeld.adapters.store import HistoryEntry


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pong(_Shape):
    """`ping`."""

    pong: Literal[True]
    version: str


class Subscribed(_Shape):
    """`subscribe`: events follow as `event` notifications (`already`: it was on)."""

    subscribed: Literal[True]
    already: bool


class Following(_Shape):
    """`logs` with `follow`: lines follow as `log` notifications."""

    model: str
    following: Literal[True]
    already: bool


class HistoryShape(_Shape):
    """`history`: what was done to models and why, oldest first."""

    entries: list[HistoryEntry]


class FailureShape(_Shape):
    """Why a model failed."""

    reason: str
    exit_code: int | None
    last_lines: list[str]


class DownloadShape(_Shape):
    """What the HF cache holds of a model's weights."""

    bytes: int
    complete: bool
    reason: str | None


class ParkedShape(_Shape):
    """A parked model: the host RAM its weights take, and its expected wake."""

    ram_gb: float
    estimated_wake_seconds: float
    wake_source: str


class RestartShape(_Shape):
    """restart = "on-failure" bookkeeping."""

    policy: str
    attempts: int
    max_retries: int
    next_attempt_at: str | None
    gave_up: bool


class ActivityShape(_Shape):
    """A running model's work, from its backend's /metrics (per second: None until two
    readings)."""

    in_flight: float
    waiting: float
    kv_cache_usage: float
    requests_per_s: float | None
    tokens_per_s: float | None


class ModelStatusShape(_Shape):
    """One model in `status`: the seed's fields, then state time, failure and sources."""

    status: Literal["stopped", "loading", "running", "stopping", "sleeping", "failed"]
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
    download: DownloadShape | None
    health: str
    failure: FailureShape | None
    gpus: list[int]
    pinned: bool
    sleep_mode: bool
    parked: ParkedShape | None
    last_wake_seconds: float | None
    wake_fallback: str | None
    idle_unload_after_s: float | None
    idle_seconds: float | None
    runtime: Literal["docker", "process"]
    endpoint: str
    last_load_seconds: float | None
    restart: RestartShape
    unmanaged: bool
    leases: int
    waiting: int
    activity: ActivityShape | None
    config_pending: bool
    backend_pid: int | None
    container_id: str | None


class DeviceShape(_Shape):
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


class ProcessShape(_Shape):
    """One process holding GPU memory."""

    pid: int
    device: int
    used_gb: float
    model: str | None
    unmanaged: bool


class GpuShape(_Shape):
    """`gpu`: the seed's block summed over devices, then devices and freshness."""

    used_mb: int
    total_mb: int
    available_mb: int
    used_gb: float
    total_gb: float
    available_gb: float
    devices: list[DeviceShape]
    processes: list[ProcessShape]
    backend: str
    read_at: str | None
    per_process: bool
    stale: bool
    error: str | None
    source: Literal["measured"]


class ParkingShape(_Shape):
    """Host RAM for parked models."""

    ram_budget_gb: float
    ram_used_gb: float
    ram_free_gb: float


class RuntimeShape(_Shape):
    """Whether a runtime answers."""

    available: bool
    error: str | None


class StatusShape(_Shape):
    """`status`: every model, the GPU, parking, runtimes, and how busy the daemon is."""

    models: dict[str, ModelStatusShape]
    gpu: GpuShape
    parking: ParkingShape
    runtimes: dict[str, RuntimeShape]
    eviction_policy: str
    busy: bool
    in_flight: int
    subscribers: int


class ModelInfoShape(_Shape):
    """One configured model in `models`."""

    name: str
    runtime: Literal["docker", "process"]
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
