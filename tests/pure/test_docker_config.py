"""The Engine API body modeld sends to create a container (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from modeld.adapters.backendkeys import launch_environment
from modeld.adapters.runtime.docker import container_config
from modeld.core.config import ModelConfig, parse_config
from modeld.core.config_checks import config_warnings


def test_create_body_carries_labels_ports_volumes_and_gpus() -> None:
    """Image, command, env, volumes, ports and the NVIDIA device request all reach Docker."""
    model = ModelConfig.model_validate(
        {
            "name": "gpt-oss-20b",
            "image": "vllm/vllm-openai:v0.32.0",
            "command": ["--model", "openai/gpt-oss-20b", "--gpu-memory-utilization", "0.85"],
            "env": {"HF_HUB_OFFLINE": "1"},
            "volumes": ["/srv/hf:/root/.cache/huggingface:ro"],
            "ports": ["127.0.0.1:8002:8000", "9000:9000/udp"],
            "endpoint": "http://127.0.0.1:8002",
            "gpus": [0, 1],
            "stop_timeout_s": 20,
        }
    )
    body = container_config(model, model.launch_env)
    assert body["Image"] == "vllm/vllm-openai:v0.32.0"
    assert body["Cmd"][-1] == "0.85"
    assert body["Env"] == ["HF_HUB_OFFLINE=1"]
    assert body["Labels"] == {"modeld.model": "gpt-oss-20b"}
    assert body["StopTimeout"] == 20
    host = body["HostConfig"]
    assert host["Binds"] == ["/srv/hf:/root/.cache/huggingface:ro"]
    assert body["ExposedPorts"] == {"8000/tcp": {}, "9000/udp": {}}
    assert host["PortBindings"] == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8002"}],
        # No address given: loopback only, never every interface.
        "9000/udp": [{"HostIp": "127.0.0.1", "HostPort": "9000"}],
    }
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "DeviceIDs": ["0", "1"], "Capabilities": [["gpu"]]}
    ]
    assert "NetworkMode" not in host


def test_a_container_keeps_its_vllm_cache_across_starts() -> None:
    """The model's kept cache directory is mounted where the container's vLLM looks, and
    VLLM_CACHE_ROOT says so; the config gives each model its own under cache_dir."""
    config = parse_config(
        {
            "daemon": {"cache_dir": "/var/cache/modeld"},
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {"chat": {"image": "vllm/vllm-openai", "endpoint": "http://h:1"}},
        }
    )
    model = config.models["chat"]
    assert model.vllm_cache_dir == Path("/var/cache/modeld/vllm/chat")
    body = container_config(model, launch_environment(model, container=True))
    assert body["HostConfig"]["Binds"] == ["/var/cache/modeld/vllm/chat:/root/.cache/vllm"]
    assert "VLLM_CACHE_ROOT=/root/.cache/vllm" in body["Env"]


def test_no_gpu_request_and_host_network() -> None:
    """request_gpus = false sends no device request; network_mode passes through."""
    model = ModelConfig.model_validate(
        {
            "name": "m",
            "image": "img",
            "endpoint": "http://127.0.0.1:1",
            "request_gpus": False,
            "network_mode": "host",
        }
    )
    host = container_config(model, model.launch_env)["HostConfig"]
    assert "DeviceRequests" not in host
    assert host["NetworkMode"] == "host"
    assert "Cmd" not in container_config(model, model.launch_env)


def test_sleep_mode_reaches_the_container() -> None:
    """sleep_mode: vLLM's flag is appended to the container's command and dev mode (which
    serves /sleep and /wake_up) is set in its environment."""
    model = ModelConfig(
        name="m",
        image="vllm/vllm-openai:latest",
        command=["--model", "org/m"],
        endpoint="http://127.0.0.1:8000",
        sleep_mode=True,
    )
    body = container_config(model, model.launch_env)
    assert body["Cmd"] == ["--model", "org/m", "--enable-sleep-mode"]
    assert "VLLM_SERVER_DEV_MODE=1" in body["Env"]


def test_risky_exposure_is_warned_about() -> None:
    """A sleep-mode backend off loopback, or ports published on every interface, are
    named in the warnings an operator sees at start; a sleep-mode backend on loopback TCP
    is told to move to a Unix socket (every local user reaches loopback); one on a Unix
    socket is not warned of."""
    models = {
        "open": {
            "image": "vllm/vllm-openai:latest",
            "endpoint": "http://10.0.0.5:8000",
            "sleep_mode": True,
            "ports": ["0.0.0.0:8000:8000"],
        },
        "closed": {
            "image": "vllm/vllm-openai:latest",
            "endpoint": "http://127.0.0.1:8001",
            "sleep_mode": True,
            "ports": ["8001:8000", "127.0.0.1:8002:8000"],
        },
        "private": {
            "image": "vllm/vllm-openai:latest",
            "endpoint": "unix:/run/modeld/backends/private.sock",
            "sleep_mode": True,
        },
    }
    warnings = config_warnings(parse_config({"models": models}))
    assert len(warnings) == 3
    opened = [w for w in warnings if w.startswith("models.open")]
    assert any("VLLM_SERVER_DEV_MODE" in w for w in opened)
    assert any("0.0.0.0" in w for w in opened)
    (loopback,) = [w for w in warnings if w.startswith("models.closed")]
    assert "unix:" in loopback


def test_a_gateway_open_beyond_loopback_without_keys_is_warned_of() -> None:
    """`[gateway] listen` beyond loopback with no API keys: a warning (check-config and the
    daemon's start say it); with keys, or on loopback, none."""
    models = {"m": {"image": "vllm/vllm-openai:latest", "endpoint": "http://127.0.0.1:8000"}}

    def warned(gateway: dict[str, object]) -> list[str]:
        return config_warnings(parse_config({"models": models, "gateway": gateway}))

    assert [w.split(":")[0] for w in warned({"listen": "0.0.0.0:8080"})] == ["gateway.listen"]
    assert warned({"listen": "0.0.0.0:8080", "api_keys": ["sk-0123456789abcdefghijklm"]}) == []
    assert warned({"listen": "127.0.0.1:8080"}) == []
    assert warned({}) == []


def test_a_container_on_a_unix_socket_mounts_only_a_directory_of_its_own() -> None:
    """A backend on a Unix socket gets a directory of its own beside its socket, mounted
    where the socket's folder is inside the container: never the shared folder."""
    model = ModelConfig(
        name="chat",
        image="vllm/vllm-openai:latest",
        command=["--uds", "/run/modeld/backends/chat.sock"],
        endpoint="unix:/run/modeld/backends/chat.sock",
    )
    binds = container_config(model, model.launch_env)["HostConfig"]["Binds"]
    assert binds == ["/run/modeld/backends/.chat.sock.d:/run/modeld/backends"]
