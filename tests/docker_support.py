"""A locally built image that plays vLLM, made with `docker import` of a busybox rootfs.

No registry is reachable, so nothing is pulled: the rootfs holds Debian's static
busybox and a script that keeps the port closed while "loading", then serves
`/health` (200, empty) and `/v1/models` with busybox httpd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tests.ports import free_port

IMAGE = "modeld-test/fake-vllm:1"
BUSYBOX = Path("/bin/busybox")

FAKE_VLLM = """#!/bin/sh
# fake-vllm PORT LOAD_SECONDS [EXIT_CODE]: vLLM's port behaviour, in busybox.
trap 'echo "fake-vllm: SIGTERM, shutting down"; exit 0' TERM INT
echo "fake-vllm: loading ${MODEL:-model} for ${2}s"
sleep "$2" & wait $!
if [ -n "$3" ]; then
  echo "fake-vllm: CUDA error: out of memory"
  exit "$3"
fi
mkdir -p /tmp/www/v1
: > /tmp/www/health
echo '{"object":"list","data":[{"id":"'"${MODEL:-model}"'","object":"model"}]}' > /tmp/www/v1/models
echo "fake-vllm: serving on 127.0.0.1:$1"
httpd -f -p "127.0.0.1:$1" -h /tmp/www & wait $!
"""


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI (tests use it to set up and to check what modeld did)."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=120
    )


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed (apt-get install docker.io)"
    if not BUSYBOX.exists():
        return f"{BUSYBOX} is missing (apt-get install busybox-static)"
    try:
        result = docker_cli("info", "--format", "{{.ServerVersion}}", check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if result.returncode != 0:
        return f"no Docker engine answers: {result.stderr.strip()}"
    return None


def build_image() -> str:
    """Import the fake-vLLM image (once per engine) and return its tag."""
    if docker_cli("image", "inspect", IMAGE, check=False).returncode == 0:
        return IMAGE
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        (root / "bin").mkdir(parents=True)
        (root / "tmp").mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for applet in ("sh", "sleep", "httpd", "mkdir", "echo"):
            (root / "bin" / applet).symlink_to("busybox")
        script = root / "fake-vllm"
        script.write_text(FAKE_VLLM)
        script.chmod(0o755)
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        subprocess.run(
            ["docker", "import", str(archive), IMAGE], check=True, capture_output=True, timeout=120
        )
    return IMAGE


def docker_required() -> bool:
    """CI sets MODELD_REQUIRE_DOCKER=1: there a missing engine fails instead of skipping."""
    return os.environ.get("MODELD_REQUIRE_DOCKER") == "1"


def docker_model(
    image: str, prefix: str, name: str, gb: float, *extra: str, load_seconds: float = 0.5
) -> dict[str, Any]:
    """A docker model table for the fake-vLLM image on host networking."""
    port = free_port()
    return {
        "runtime": "docker",
        "image": image,
        "container": f"{prefix}-{name}",
        "command": ["/fake-vllm", str(port), str(load_seconds), *extra],
        "env": {"MODEL": name},
        "network_mode": "host",
        "request_gpus": False,
        "endpoint": f"http://127.0.0.1:{port}",
        "gpu_memory_gb": gb,
        "size_gb": gb,
        "load_timeout_s": 20,
        "stop_timeout_s": 5,
    }
