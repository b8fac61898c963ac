"""The Docker runtime, through aiodocker only.

A model names either an existing container (docker compose made it; modeld only
starts and stops it) or an image, from which modeld creates a container labelled
`modeld.model=<name>`, recreating it at each start so config changes apply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TypedDict, cast

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.types import JSONObject
from pydantic import BaseModel, Field

from modeld.adapters.backendkeys import (
    CONTAINER_VLLM_CACHE,
    launch_environment,
    prepare_cache,
)
from modeld.adapters.runtime.base import LOG_LINES, MAX_LINE_CHARS, BackendState, BackendStatus
from modeld.adapters.socketdir import private_dir
from modeld.core.config import ModelConfig
from modeld.core.errors import (
    LoadFailed,
    ModeldError,
    NameCollision,
    OperationFailed,
    RuntimeUnavailable,
)

LABEL = "modeld.model"
# aiodocker reports a failed connection to the engine as a DockerError with this status.
CONNECTION_FAILED = 900


LOOPBACK = "127.0.0.1"
# Deadlines on the engine (a wait for the container's exit has none: callers race it).
ENGINE_TIMEOUT_S = 30.0
STOP_MARGIN_S = 30.0


class PortBinding(TypedDict):
    """Where a container port is published on the host."""

    HostIp: str
    HostPort: str


class DeviceRequest(TypedDict):
    """GPUs asked of the NVIDIA runtime."""

    Driver: str
    DeviceIDs: list[str]
    Capabilities: list[list[str]]


class HostConfig(TypedDict, total=False):
    """The host side of a container: mounts, ports, network, GPUs."""

    Binds: list[str]
    PortBindings: dict[str, list[PortBinding]]
    NetworkMode: str
    DeviceRequests: list[DeviceRequest]


class CreateBody(TypedDict, total=False):
    """The Engine API's container create body, the fields modeld sets."""

    Image: str
    Cmd: list[str]
    Env: list[str]
    Labels: dict[str, str]
    ExposedPorts: dict[str, dict[str, str]]
    HostConfig: HostConfig
    StopTimeout: int


class _State(BaseModel):
    """What modeld reads of the Engine's inspect `State` (the rest is ignored)."""

    running: bool = Field(default=False, alias="Running")
    pid: int | None = Field(default=None, alias="Pid")
    started_at: str | None = Field(default=None, alias="StartedAt")
    status: str | None = Field(default=None, alias="Status")
    exit_code: int | None = Field(default=None, alias="ExitCode")


def _port_bindings(
    ports: list[str],
) -> tuple[dict[str, dict[str, str]], dict[str, list[PortBinding]]]:
    """Compose-style "host:container" (or "ip:host:container") into Docker's two maps.
    Without an ip, the port is published on loopback only: a vLLM backend has no auth of
    its own (and in dev mode, for sleep, it serves admin endpoints)."""
    exposed: dict[str, dict[str, str]] = {}
    bindings: dict[str, list[PortBinding]] = {}
    for spec in ports:
        parts = spec.split(":")
        container_port = parts[-1] if "/" in parts[-1] else f"{parts[-1]}/tcp"
        host_ip = parts[0] if len(parts) == 3 else LOOPBACK
        host_port = parts[-2] if len(parts) >= 2 else ""
        exposed[container_port] = {}
        bindings.setdefault(container_port, []).append({"HostIp": host_ip, "HostPort": host_port})
    return exposed, bindings


def container_config(model: ModelConfig, env: Mapping[str, str]) -> CreateBody:
    """The Engine API create body for a model that names an image, its environment `env`."""
    if model.image is None:
        raise ValueError(f"{model.name} names a container, not an image: nothing to create")
    exposed, bindings = _port_bindings(model.ports)
    binds = list(model.volumes)
    if model.vllm_cache_dir is not None:
        binds.append(f"{model.vllm_cache_dir}:{CONTAINER_VLLM_CACHE}")
    if model.socket_path is not None:
        # vLLM binds its --uds socket in a directory of its own, seen inside the container
        # where the socket's folder is: it sees no other backend's socket. The socket's
        # path on the host is a link into that directory (socketdir.prepare_backend_socket).
        binds.append(f"{private_dir(model.socket_path)}:{model.socket_path.parent}")
    host: HostConfig = {"Binds": binds, "PortBindings": bindings}
    if model.network_mode:
        host["NetworkMode"] = model.network_mode
    if model.request_gpus:
        host["DeviceRequests"] = [
            {
                "Driver": "nvidia",
                "DeviceIDs": [str(gpu) for gpu in model.gpus],
                "Capabilities": [["gpu"]],
            }
        ]
    config: CreateBody = {
        "Image": model.image,
        "Env": [f"{key}={value}" for key, value in env.items()],
        "Labels": {LABEL: model.name},
        "ExposedPorts": exposed,
        "HostConfig": host,
        "StopTimeout": int(model.stop_timeout_s),
    }
    if model.launch_command:
        config["Cmd"] = model.launch_command
    return config


def _status(container_id: str, inspected: object) -> BackendStatus:
    """A container's state (the Engine's inspect `State`) as the runtime reports it."""
    state = _State.model_validate(inspected)
    if state.running:
        return BackendStatus(
            BackendState.RUNNING,
            pid=state.pid or None,
            id=container_id,
            started_at=state.started_at,
        )
    if state.status == "created":
        return BackendStatus(BackendState.ABSENT, id=container_id)
    return BackendStatus(
        BackendState.EXITED,
        exit_code=state.exit_code,
        id=container_id,
        started_at=state.started_at,
    )


def _cut(line: str) -> str:
    line = line.rstrip("\r")
    if len(line) > MAX_LINE_CHARS:
        return f"{line[:MAX_LINE_CHARS]}… [cut]"
    return line


def _label(container: DockerContainer) -> str | None:
    labels = (container["Config"] or {}).get("Labels") or {}
    value = labels.get(LABEL)
    return value if isinstance(value, str) else None


class DockerRuntime:
    """A Runtime over the Docker Engine API."""

    name = "docker"

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._docker: aiodocker.Docker | None = None

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker(url=self._url)
            except Exception as exc:  # aiodocker raises ValueError when it finds no socket
                raise RuntimeUnavailable(
                    f"Docker engine not found: {exc}", runtime="docker"
                ) from None
        return self._docker

    @contextlib.asynccontextmanager
    async def _engine(
        self, model: ModelConfig, action: str, timeout: float | None = ENGINE_TIMEOUT_S
    ) -> AsyncIterator[aiodocker.Docker]:
        """Map the engine's failures to modeld's errors, in one place for this runtime; an
        engine that does not answer within `timeout` is unavailable."""
        try:
            async with asyncio.timeout(timeout):
                yield self._client()
        except ModeldError:
            raise
        except aiodocker.DockerError as exc:
            if exc.status == CONNECTION_FAILED:
                raise RuntimeUnavailable(
                    f"Docker engine unreachable ({action} {model.name}): {exc.message}",
                    runtime="docker",
                ) from None
            error = LoadFailed if action == "start" else OperationFailed
            raise error(
                f"{model.name}: docker {action} failed: {exc.message}",
                model=model.name,
                reason=exc.message,
                docker_status=exc.status,
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RuntimeUnavailable(
                f"Docker engine unreachable ({action} {model.name}): {exc}",
                runtime="docker",
            ) from None

    async def _find(self, docker: aiodocker.Docker, model: ModelConfig) -> DockerContainer | None:
        """The model's container: for an `image` model, only one modeld made for it (its
        label says so); a stranger with the same name is never touched."""
        try:
            container = await docker.containers.get(model.container_name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise
        if model.image and _label(container) != model.name:
            raise NameCollision(
                f"{model.name}: a container named {model.container_name!r} exists that "
                f"modeld did not make for this model (label {LABEL}={_label(container)!r}); "
                "rename or remove it, or name it with `container` to have modeld use it",
                model=model.name,
                container=model.container_name,
                label=_label(container),
            )
        return container

    async def start(self, model: ModelConfig) -> BackendStatus:
        """Start the existing container, or create a fresh one from the image and start it."""
        async with self._engine(model, "start") as docker:
            container = await self._find(docker, model)
            if model.image:
                if container is not None:
                    if container["State"].get("Running"):
                        # The inspect data `containers.get` fetched: no second request.
                        return _status(container.id, container["State"])
                    await container.delete(force=True)
                await asyncio.to_thread(prepare_cache, model)
                env = await asyncio.to_thread(launch_environment, model, True)
                # A TypedDict of JSON values is a JSON object (mypy types it as a
                # Mapping of objects only).
                body = cast(JSONObject, container_config(model, env))
                container = await docker.containers.create(body, name=model.container_name)
            elif container is None:
                raise LoadFailed(
                    f"{model.name}: container {model.container_name!r} does not exist "
                    "(create it first, e.g. `docker compose create`, or set `image`)",
                    model=model.name,
                    reason="no such container",
                )
            await container.start()
            shown = await container.show()
            return _status(container.id, shown["State"])

    async def stop(self, model: ModelConfig) -> None:
        """Stop the container (SIGTERM, SIGKILL after `stop_timeout_s`); no-op when not running."""
        timeout = model.stop_timeout_s + STOP_MARGIN_S
        async with self._engine(model, "stop", timeout) as docker:
            container = await self._find(docker, model)
            if container is None or not container["State"].get("Running"):
                return
            await container.stop(t=int(model.stop_timeout_s))

    async def inspect(self, model: ModelConfig) -> BackendStatus:
        """The container's state, PID and exit code."""
        async with self._engine(model, "inspect") as docker:
            container = await self._find(docker, model)
            if container is None:
                return BackendStatus(BackendState.ABSENT)
            return _status(container.id, container["State"])

    async def wait_exit(self, model: ModelConfig) -> BackendStatus:
        """Block on the Engine's wait endpoint until the container stops running."""
        async with self._engine(model, "wait", None) as docker:
            container = await self._find(docker, model)
            if container is None:
                return BackendStatus(BackendState.ABSENT)
            result = await container.wait()
            return BackendStatus(
                BackendState.EXITED, exit_code=result.get("StatusCode"), id=container.id
            )

    async def logs(self, model: ModelConfig, lines: int = LOG_LINES) -> list[str]:
        """The container's last log lines; empty if the engine cannot give them."""
        try:
            async with self._engine(model, "logs") as docker:
                container = await self._find(docker, model)
                if container is None:
                    return []
                chunks = await container.log(stdout=True, stderr=True, tail=lines)
        except ModeldError:
            return []
        return "".join(chunks).splitlines()[-lines:]

    async def follow(self, model: ModelConfig, lines: int = LOG_LINES) -> AsyncIterator[str]:
        """The container's last `lines` lines, then each new one until it stops (the
        engine ends the stream then); nothing if the engine cannot give them."""
        try:
            async with self._engine(model, "logs") as docker:
                container = await self._find(docker, model)
            if container is None:
                return
            stream = container.log(stdout=True, stderr=True, follow=True, tail=lines)
            partial = ""
            async for chunk in stream:
                *ended, partial = (partial + chunk).split("\n")
                for line in ended:
                    yield _cut(line)
                # A line without its newline is kept only up to the cut.
                partial = partial[: MAX_LINE_CHARS + 1]
            if partial:
                yield _cut(partial)
        except (ModeldError, aiodocker.DockerError, aiohttp.ClientError, OSError):
            return

    async def close(self) -> None:
        """Close the engine connection; containers keep running (a restart adopts them)."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
