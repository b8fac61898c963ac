"""Wire values for tests that read them without a daemon: a model's status and a whole
status with defaults, each field given where a test cares."""

from __future__ import annotations

from typing import Any

from modeld.wire.status import GpuStatus, ModelStatus, Parking, RestartStatus, Status

MODEL_DEFAULTS: dict[str, Any] = {
    "status": "stopped",
    "since": "2026-01-01T00:00:00+00:00",
    "size_gb": None,
    "description": "",
    "aliases": [],
    "estimated_load_time_seconds": 60.0,
    "estimated_load_time_source": "configured",
    "gpu_memory_used_gb": None,
    "gpu_memory_source": None,
    "gpu_memory_per_device_gb": {},
    "gpu_memory_required_gb": 30.0,
    "gpu_memory_required_source": "configured",
    "gpu_memory_over_plan_gb": None,
    "downloaded_size": None,
    "download": None,
    "health": "unknown",
    "failure": None,
    "gpus": [0],
    "pinned": False,
    "sleep_mode": False,
    "parked": None,
    "last_wake_seconds": None,
    "wake_fallback": None,
    "idle_unload_after_s": None,
    "idle_seconds": None,
    "runtime": "process",
    "endpoint": "http://127.0.0.1:8000",
    "last_load_seconds": None,
    "restart": RestartStatus(
        policy="never", attempts=0, max_retries=0, next_attempt_at=None, gave_up=False
    ),
    "unmanaged": False,
    "leases": 0,
    "waiting": 0,
    "activity": None,
    "config_pending": False,
    "backend_pid": None,
    "container_id": None,
    "base": None,
    "adapters": [],
    "adapter_slots": None,
}


def model_status(**fields: Any) -> ModelStatus:
    """A model's status: the defaults, with `fields` over them."""
    return ModelStatus.model_validate(MODEL_DEFAULTS | fields)


def whole_status(models: dict[str, ModelStatus], gpu_total_gb: float = 80.0) -> Status:
    """A status of `models` on one GPU of `gpu_total_gb`, nothing else going on."""
    total_mb = round(gpu_total_gb * 1024)
    device = {
        "index": 0,
        "name": "Simulated",
        "total_gb": gpu_total_gb,
        "used_gb": 0.0,
        "free_gb": gpu_total_gb,
        "total_mb": total_mb,
        "used_mb": 0,
        "free_mb": total_mb,
        "unmanaged_gb": None,
        "health": "ok",
        "health_reasons": [],
    }
    gpu = GpuStatus.model_validate(
        {
            "used_mb": 0,
            "total_mb": total_mb,
            "available_mb": total_mb,
            "used_gb": 0.0,
            "total_gb": gpu_total_gb,
            "available_gb": gpu_total_gb,
            "devices": [device],
            "processes": [],
            "backend": "simulated",
            "read_at": None,
            "per_process": False,
            "stale": False,
            "error": None,
            "source": "measured",
        }
    )
    return Status(
        models=models,
        gpu=gpu,
        parking=Parking(ram_budget_gb=0.0, ram_used_gb=0.0, ram_free_gb=0.0),
        runtimes={},
        eviction_policy="lru",
        busy=False,
        in_flight=0,
        subscribers=0,
    )
