"""A model configured without an endpoint: modeld chooses its Unix socket, fills
`{socket}` in the real backend's command, and serves it there."""

from __future__ import annotations

from pathlib import Path

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.adapters.runtime.process import ProcessRuntime
from modeld.adapters.vllm import Health, VllmClient
from modeld.core.config import parse_config
from modeld.engine.build import build_engine

FAKE = ["modeld-fake-vllm"]
QUICK = ["--load-seconds", "0.2"]


async def test_a_backend_without_an_endpoint_answers_on_the_socket_modeld_chose(
    tmp_path: Path,
) -> None:
    """No port to pick by hand: the backend binds NAME.sock beside the daemon's socket
    (`--uds {socket}`), runs, answers /health there, and a lease points clients at it."""
    config = parse_config(
        {
            "daemon": {
                "socket": str(tmp_path / "run" / "modeld.sock"),
                "state_dir": str(tmp_path / "state"),
                "poll_interval_s": 3600,
            },
            "gpu": {"backend": "simulated", "devices_gb": [80], "release_delay_s": 0},
            "models": {
                "m": {
                    "runtime": "process",
                    "command": [*FAKE, "--model", "m", "--uds", "{socket}", *QUICK],
                    "gpu_memory_gb": 10,
                    "load_timeout_s": 30,
                }
            },
        }
    )
    socket = tmp_path / "run" / "backends" / "m.sock"
    assert config.models["m"].endpoint == f"unix:{socket}"
    probe = VllmClient(timeout_s=2)
    engine = await build_engine(
        config,
        gpu=SimulatedGpu(config.gpu),
        runtimes={"process": ProcessRuntime()},
        vllm=VllmClient(timeout_s=2),
    )
    await engine.startup()
    try:
        result = await engine.models.switch("m")
        assert result.state == "running"
        assert socket.is_socket()
        assert await probe.health(f"unix:{socket}") is Health.HEALTHY
        lease = await engine.leases.acquire("m", owner=1)
        assert lease.endpoint == f"unix:{socket}"
        engine.leases.release(lease.lease, owner=1)
    finally:
        await engine.shutdown()
        await probe.close()
