"""The one exception family of modeld; each error knows its JSON-RPC code and data."""

from __future__ import annotations

from typing import Any, ClassVar


class ModeldError(Exception):
    """Base of every error modeld reports to a caller."""

    code: ClassVar[int] = -32000
    kind: ClassVar[str] = "error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = {"error": self.kind, **data}


class UnknownModel(ModeldError):
    """The named model is not in the configuration."""

    code = -32001
    kind = "unknown_model"


class InsufficientMemory(ModeldError):
    """Even stopping every stoppable model would not make the target fit."""

    code = -32002
    kind = "insufficient_memory"


class LoadFailed(ModeldError):
    """The backend did not reach health: it exited, died or could not be started."""

    code = -32003
    kind = "load_failed"


class OperationTimeout(ModeldError):
    """A wait (for health, for memory to be released) ran past its deadline."""

    code = -32004
    kind = "timeout"


class RuntimeUnavailable(ModeldError):
    """The runtime (the Docker engine) cannot be reached."""

    code = -32005
    kind = "runtime_unavailable"


class GpuUnavailable(ModeldError):
    """GPU memory cannot be read, so no memory decision can be made."""

    code = -32006
    kind = "gpu_unavailable"


class OperationFailed(ModeldError):
    """A runtime operation (stop, inspect) failed for a reason other than the above."""

    code = -32007
    kind = "operation_failed"


class ConfigError(ModeldError):
    """The configuration file is missing, unreadable or invalid."""

    code = -32008
    kind = "invalid_config"


class PermissionDenied(ModeldError):
    """The caller may read but not change (allow_uids / allow_groups)."""

    code = -32009
    kind = "permission_denied"


class TooManyConnections(ModeldError):
    """The daemon holds max_connections connections already."""

    code = -32010
    kind = "too_many_connections"


class SleepModeFailed(ModeldError):
    """A backend's sleep endpoint (/sleep, /wake_up, /is_sleeping) did not do its job."""

    code = -32011
    kind = "sleep_mode_failed"


class NameCollision(ModeldError):
    """A container with the model's name exists that modeld did not make for it."""

    code = -32012
    kind = "name_collision"


class ModelsBusy(ModeldError):
    """A switch or stop needs models that serve requests, and their leases did not end
    within drain_timeout_s: nothing was stopped."""

    code = -32013
    kind = "models_busy"


class UnknownLease(ModeldError):
    """`release` of a lease this connection does not hold."""

    code = -32014
    kind = "unknown_lease"


class LimitReached(ModeldError):
    """A per-connection limit (such as how many logs it follows) is reached."""

    code = -32015
    kind = "limit_reached"


class WouldLoad(ModeldError):
    """`acquire` with `load: false` of a model that would need a load or a wake."""

    code = -32016
    kind = "would_load"


class AdapterFailed(ModeldError):
    """A base's runtime LoRA endpoint (/v1/load_lora_adapter, /v1/unload_lora_adapter)
    did not do its job; the base keeps serving."""

    code = -32017
    kind = "adapter_failed"


class ProbeFailed(ModeldError):
    """A backend did not answer its token probe (a greedy one-token completion, or a
    one-input embedding) within its deadline, though /health may answer 200."""

    code = -32018
    kind = "probe_failed"


class CrashLooping(ModeldError):
    """A model that died during requests more than restart_max_retries times in a row is
    held failed: no lease loads it again until an operator starts it."""

    code = -32019
    kind = "crash_loop"


class GpuUnusable(ModeldError):
    """A model's device is unusable (a critical Xid, uncorrected ECC errors, a failed row
    remap): nothing is loaded on it until an operator clears its health."""

    code = -32020
    kind = "gpu_unusable"


class UnknownDevice(ModeldError):
    """A device index this host does not have."""

    code = -32602
    kind = "invalid_params"


class SocketInUse(ModeldError):
    """Another process answers on the daemon's socket path."""

    kind = "socket_in_use"
