"""The TOML configuration, validated with pydantic; errors name the file and the field."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modeld.core.addresses import fill_placeholders, served_in
from modeld.core.config_base import NonNegativeFloat, PositiveFloat, Strict
from modeld.core.config_errors import describe
from modeld.core.config_tables import named_tables
from modeld.core.errors import ConfigError
from modeld.core.gateway_config import GatewayConfig, MetricsConfig
from modeld.core.gpu_config import GpuConfig
from modeld.core.lora import RUNTIME_LORA_ENV

EvictionPolicy = Literal["largest_first", "lru", "fewest", "cost_aware"]
SLEEP_MODE_FLAG = "--enable-sleep-mode"
# What a model may be called: what the gateway accepts in a request's `model`.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


class DaemonConfig(Strict):
    """The `[daemon]` table."""

    socket: Path = Path("/run/modeld/modeld.sock")
    # Where the backends of models without an `endpoint` listen: NAME.sock in here.
    # Default: `backends` beside the daemon's socket.
    backend_socket_dir: Path | None = None
    socket_mode: int = 0o660
    socket_group: str | None = None
    state_dir: Path = Path("/var/lib/modeld")
    # Caches that outlive a backend: each model's vLLM compile cache (torch.compile and
    # CUDA graph artifacts: VLLM_CACHE_ROOT) is kept in cache_dir/vllm/NAME, so a second
    # cold start reuses them. Default: state_dir/cache; the shipped config uses
    # /var/cache/modeld (systemd's CacheDirectory=modeld).
    cache_dir: Path | None = None
    # cost_aware stops what is least likely to be wanted back soon, weighted by how long it
    # takes to load; it beat the seed's largest_first on every bench trace (bench/traces.py).
    eviction_policy: EvictionPolicy = "cost_aware"
    poll_interval_s: PositiveFloat = 2.0
    memory_release_timeout_s: PositiveFloat = 60.0
    memory_poll_interval_s: PositiveFloat = 0.05
    # A refused connection costs next to nothing: probe often, answer soon after health.
    health_poll_interval_s: PositiveFloat = 0.02
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_connections: Annotated[int, Field(ge=1)] = 256
    # One uid other than root and the allowed callers may hold at most this many; the
    # last reserved_connections are kept for root and the allowed callers.
    max_connections_per_uid: Annotated[int, Field(ge=1)] = 32
    reserved_connections: Annotated[int, Field(ge=0)] = 16
    # A request line begun must end within this; a client that does not read its answers
    # for this long is disconnected.
    client_line_timeout_s: PositiveFloat = 10.0
    client_write_timeout_s: PositiveFloat = 30.0
    # Started at daemon start, in this order, each only if it fits beside the ones before.
    preload: list[str] = Field(default_factory=list)
    # How long a switch (or stop) waits for the leases on the models it must evict to
    # end (requests in flight: LLM answers take minutes) before it fails models_busy.
    drain_timeout_s: PositiveFloat = 600.0
    # A model found running at startup is held as if it had one lease this long, so the
    # routers whose requests it was serving (the gateway) take their leases again before
    # a switch may evict it; 0: no hold.
    adopt_grace_s: NonNegativeFloat = 10.0
    # On SIGTERM: how long an operation in flight may still take before modeld exits.
    shutdown_timeout_s: PositiveFloat = 30.0
    # When a switch's target fails after others were stopped for it, start them again.
    rollback_on_failure: bool = True
    # Who may call mutating methods (switch, start, stop, restart). Both empty: anyone
    # who can open the socket. Root may always.
    allow_uids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    allow_groups: list[str] = Field(default_factory=list)
    hf_cache_dir: Path | None = None
    # Host RAM that parked (sleeping) models' weights may take in total; 0 disables
    # parking, so models with sleep_mode are stopped like any other.
    park_ram_gb: NonNegativeFloat = 0.0
    # Process backends get a clean environment: PATH, HOME, LANG, LC_ALL, TZ, the names
    # listed here (e.g. "HF_HOME", "HF_TOKEN") from the daemon's own, and their `env`.
    pass_env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list
    )

    @field_validator("socket_mode")
    @classmethod
    def _not_world_writable(cls, value: int) -> int:
        if value & 0o002:
            raise ValueError(f"{oct(value)} is world-writable: anyone could switch models")
        return value


class ModelConfig(Strict):
    """One `[models."name"]` table."""

    name: str = ""
    runtime: Literal["docker", "process"] = "docker"
    # docker: an existing container by name, or one modeld creates from `image`.
    container: str | None = None
    image: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Its own vLLM cache (VLLM_CACHE_ROOT; bind-mounted into a container); default
    # daemon.cache_dir/vllm/NAME. Kept across starts, so compile artifacts are reused.
    vllm_cache_dir: Path | None = None
    volumes: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    network_mode: str | None = None
    request_gpus: bool = True
    cwd: Path | None = None
    # Where the backend answers. Omitted: a Unix socket modeld chooses,
    # unix:<daemon.backend_socket_dir>/NAME.sock. `{socket}`, `{host}` and `{port}` in
    # `command` are filled from it (e.g. `--uds {socket}`, or `--port {port}`).
    endpoint: str = Field(default="", validate_default=True)
    size_gb: NonNegativeFloat = 0.0
    hf_path: str | None = None
    # The name vLLM serves it under, when the command does not say (see `served_name`):
    # the gateway sends requests for this model with that name.
    served_model_name: str | None = None
    # Other names clients may ask for it by (`gpt-4o`, `chat:latest`): the gateway and the
    # daemon's methods accept them; no two models may share a name or an alias.
    aliases: list[Annotated[str, Field(pattern=MODEL_NAME.pattern)]] = Field(
        default_factory=list, max_length=32
    )
    # A file whose first line is the key the backend demands on /v1 (vLLM's --api-key):
    # modeld starts the backend with VLLM_API_KEY set to it; the gateway sends it upstream.
    api_key_file: Path | None = None
    description: str = ""
    load_time_seconds: PositiveFloat = 60.0
    gpus: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    gpu_memory_gb: PositiveFloat | None = None
    load_timeout_s: PositiveFloat = 900.0
    # A load that shows no progress (no new output line, no change of /health) for this
    # long fails `stalled` at once instead of waiting out load_timeout_s (the overall
    # cap). Generous: torch.compile and CUDA graph capture can be quiet for minutes on a
    # large model. Unset: no stall deadline.
    load_stall_timeout_s: PositiveFloat | None = 300.0
    stop_timeout_s: PositiveFloat = 30.0
    pinned: bool = False
    # on-failure: a model that dies after having run is started again, with exponential
    # backoff, at most restart_max_retries times in a row.
    restart: Literal["no", "on-failure"] = "no"
    restart_max_retries: Annotated[int, Field(ge=0)] = 5
    restart_backoff_s: PositiveFloat = 1.0
    restart_backoff_max_s: PositiveFloat = 60.0
    # Running this long counts as recovered: the retry count starts again from zero.
    restart_reset_after_s: PositiveFloat = 300.0
    # vLLM sleep mode: when memory is needed, park the model (POST /sleep?level=1: weights
    # to host RAM) instead of stopping it, and wake it in seconds instead of a cold load.
    # modeld adds `--enable-sleep-mode` to `command` and VLLM_SERVER_DEV_MODE=1 to `env`.
    sleep_mode: bool = False
    # Seconds a wake takes, until measured here (default: a tenth of the load estimate,
    # vLLM's published ratio); host RAM the parked weights take (default: size_gb); how
    # long a wake may take before modeld falls back to a cold restart.
    wake_time_seconds: PositiveFloat | None = None
    park_ram_gb: PositiveFloat | None = None
    wake_timeout_s: PositiveFloat = 60.0
    # Park (sleep_mode) or stop the model once it has served no request for this long.
    idle_unload_after_s: PositiveFloat | None = None
    # Trusted only when it answers (docs/probes.md): after each load and wake, and once
    # idle for probe_interval_s, a greedy one-token completion (`token`), a one-input
    # embedding (`embedding`, for pooling models) or /health alone (`health`), with a
    # deadline of probe_timeout_s; a failed probe fails the model.
    probe: Literal["token", "embedding", "health"] = "token"
    probe_timeout_s: PositiveFloat = 5.0
    probe_interval_s: PositiveFloat | None = 300.0
    # Requests in flight with no token generated and none finished this long: probe at
    # once (a hung engine's requests wait forever). Generous: a long prompt's prefill
    # generates nothing for a while. Unset: no stall probe.
    stall_after_s: PositiveFloat | None = 120.0
    # A LoRA adapter (core/lora.py): the model it runs in, and its directory (PEFT's
    # layout) or Hugging Face repo id. Its endpoint, runtime and GPUs are its base's.
    base: str | None = None
    adapter: str | None = None
    # A base's adapters, by name: filled from the adapters' `base`, never written.
    adapters: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _fill_placeholders(cls, data: object) -> object:
        # `{socket}`, `{host}`, `{port}` in the command, from the endpoint: written once.
        if not isinstance(data, dict):
            return data
        command, endpoint = data.get("command"), data.get("endpoint")
        if not isinstance(command, list) or not isinstance(endpoint, str):
            return data
        if not endpoint.startswith(("unix:", "http://", "https://")):
            return data  # the endpoint's own check says what is wrong with it
        return {**data, "command": fill_placeholders(command, endpoint)}

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value.startswith("unix:"):
            path = value.removeprefix("unix:")
            # sun_path holds 107 bytes and a NUL.
            if not path.startswith("/") or len(path.encode()) > 107 or path.endswith("/"):
                raise ValueError("unix: needs an absolute socket path of at most 107 bytes")
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, or unix:/path.sock")
        return value.rstrip("/")

    @property
    def socket_path(self) -> Path | None:
        """The backend's Unix socket, when its endpoint is one (vLLM's --uds)."""
        if self.endpoint.startswith("unix:"):
            return Path(self.endpoint.removeprefix("unix:"))
        return None

    @field_validator("gpus")
    @classmethod
    def _unique_gpus(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("lists a device twice")
        return value

    @model_validator(mode="after")
    def _runtime_fields(self) -> Self:
        if (self.base is None) != (self.adapter is None):
            raise ValueError("an adapter needs both `base` (its model) and `adapter` (its files)")
        if self.base is not None:
            return self  # its runtime is its base's
        if self.gpu_memory_gb is not None and self.gpu_memory_utilization is not None:
            raise ValueError("set gpu_memory_gb or gpu_memory_utilization, not both")
        if self.runtime == "docker" and not (self.container or self.image):
            raise ValueError("a docker model needs `container` (existing) or `image` (to create)")
        if self.runtime == "process" and not self.command:
            raise ValueError("a process model needs `command`")
        if self.pinned and self.idle_unload_after_s is not None:
            raise ValueError("a pinned model is never unloaded: drop idle_unload_after_s")
        if self.api_key_file is not None and (
            "VLLM_API_KEY" in self.env
            or any(arg.split("=")[0] == "--api-key" for arg in self.command or [])
        ):
            # Two keys would disagree: the gateway would send one, vLLM expect the other.
            raise ValueError(
                "api_key_file sets the backend's key: drop VLLM_API_KEY from env "
                "and --api-key from command"
            )
        return self

    @property
    def launch_command(self) -> list[str] | None:
        """The command to run: `command`, with `--enable-sleep-mode` when sleep_mode is on."""
        if self.command is None:
            return None
        if self.sleep_mode and SLEEP_MODE_FLAG not in self.command:
            return [*self.command, SLEEP_MODE_FLAG]
        return list(self.command)

    @property
    def served_name(self) -> str:
        """The name vLLM serves this model by: `served_model_name`, else what the command
        tells vLLM (`--served-model-name`, else `--model` or `vllm serve MODEL`, which
        vLLM then serves it as), else the table's key."""
        return self.served_model_name or served_in(self.command or []) or self.name

    @property
    def launch_env(self) -> dict[str, str]:
        """The environment to add: `env`, with vLLM's dev mode (which serves /sleep) when
        sleep_mode is on, and runtime LoRA loading for a base with adapters."""
        added = {"VLLM_SERVER_DEV_MODE": "1"} if self.sleep_mode else {}
        if self.adapters:
            added.update(RUNTIME_LORA_ENV)
        return {**added, **self.env}

    @property
    def parked_ram_gb(self) -> float:
        """Host RAM its weights take while parked."""
        return self.park_ram_gb if self.park_ram_gb is not None else self.size_gb

    @property
    def container_name(self) -> str:
        """The Docker container's name: the configured one, or `modeld-<model>`."""
        return self.container or f"modeld-{self.name}"


class Config(Strict):
    """The whole configuration file."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    models: dict[str, ModelConfig]

    def aliases(self) -> dict[str, str]:
        """Each alias, and the model it names."""
        return {alias: model.name for model in self.models.values() for alias in model.aliases}

    def canonical(self, name: str) -> str:
        """The model a name or an alias names (a name it does not know, unchanged)."""
        return name if name in self.models else self.aliases().get(name, name)

    @model_validator(mode="before")
    @classmethod
    def _name_models(cls, data: object) -> object:
        # Each model learns its own name from its table key, so it can be passed around alone.
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            defaults = DaemonConfig()
            return named_tables(data, defaults.state_dir, defaults.socket)
        return data

    @model_validator(mode="after")
    def _devices_exist(self) -> Self:
        if not self.models:
            raise ValueError("declare at least one model under [models]")
        for name in self.models:
            if not MODEL_NAME.match(name):
                # The gateway refuses any other name before a lookup (gateway/body.py).
                raise ValueError(
                    f"models.{name[:64]!r}: a model's name is 1 to 128 letters, digits and "
                    "._:/@+- (starting with a letter or digit)"
                )
        taken: dict[str, str] = {name: name for name in self.models}
        for name, model in self.models.items():
            for alias in model.aliases:
                if alias in taken:
                    other = taken[alias]
                    raise ValueError(
                        f"models.{name}.aliases: {alias!r} is already "
                        + ("a model's name" if other == alias else f"an alias of {other}")
                    )
                taken[alias] = name
        unknown = [name for name in self.daemon.preload if name not in self.models]
        if unknown:
            raise ValueError(f"daemon.preload: {unknown[0]!r} is not a configured model")
        if self.gpu.backend == "simulated":
            # The simulated GPU's devices are known now; NVML's at start (check_devices).
            missing = missing_device(self.models, set(range(len(self.gpu.devices_gb))))
            if missing:
                raise ValueError(f"{missing} (the simulated GPU has {len(self.gpu.devices_gb)})")
        return self


def missing_device(models: Mapping[str, ModelConfig], present: set[int]) -> str | None:
    """The one rule for GPU indexes: the first model naming a device this host lacks, as
    "models.NAME.gpus: device N does not exist", or None."""
    for name, model in models.items():
        missing = [gpu for gpu in model.gpus if gpu not in present]
        if missing:
            return f"models.{name}.gpus: device {missing[0]} does not exist"
    return None


def parse_config(
    data: dict[str, object], source: str = "<config>", text: str | None = None
) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming the source and fields
    (with their line and column when the document's `text` is given)."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        described = describe(Config, exc.errors(), text)
        raise ConfigError(
            f"{source}: invalid configuration: " + "; ".join(said for _, said in described),
            file=source,
            fields=[path for path, _ in described],
        ) from None


def load_config(path: Path) -> Config:
    """Read and validate a TOML configuration file."""
    try:
        text = path.read_bytes().decode()
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", file=str(path)) from None
    return parse_config(data, str(path), text)
