"""A locally built image that plays vLLM, made with `docker import` of a busybox rootfs.

No registry is reachable, so nothing is pulled: the rootfs holds Debian's static
busybox and a script that keeps the port closed while "loading", then serves
`/health` (200, empty) and `/v1/models` with busybox httpd. Given vLLM's
`--enable-sleep-mode` (and VLLM_SERVER_DEV_MODE=1 for the endpoints to exist), it
serves through `nc -ll -e` instead, one shell handler per request, which also
answers `/sleep`, `/wake_up` and `/is_sleeping` as vLLM does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from modeld.testing.ports import free_port

IMAGE = "modeld-test/fake-vllm:3"
BUSYBOX = Path("/bin/busybox")

FAKE_VLLM = """#!/bin/sh
# fake-vllm PORT LOAD_SECONDS [EXIT_CODE] [--enable-sleep-mode]: vLLM's port behaviour.
trap 'echo "fake-vllm: SIGTERM, shutting down"; exit 0' TERM INT
port=$1 load=$2
shift 2
exit_code="" sleep_mode=""
for arg in "$@"; do
  case "$arg" in --enable-sleep-mode) sleep_mode=1 ;; *) exit_code=$arg ;; esac
done
echo "fake-vllm: loading ${MODEL:-model} for ${load}s"
sleep "$load" & wait $!
if [ -n "$exit_code" ]; then
  echo "fake-vllm: CUDA error: out of memory"
  exit "$exit_code"
fi
echo "fake-vllm: serving on port $port${sleep_mode:+ with sleep mode}"
if [ -n "$sleep_mode" ]; then
  nc -ll -p "$port" -e /vllm-handler & wait $!
else
  mkdir -p /tmp/www/v1
  : > /tmp/www/health
  echo '{"object":"list","data":[{"id":"'"${MODEL:-model}"'","object":"model"}]}' \\
    > /tmp/www/v1/models
  httpd -f -p "127.0.0.1:$port" -h /tmp/www & wait $!
fi
"""

# One HTTP request on stdin, its answer on stdout (busybox nc -e runs one per connection).
VLLM_HANDLER = """#!/bin/sh
read -r method target version
while read -r header; do [ -z "${header%$(printf '\\r')}" ] && break; done
path="${target%%\\?*}"
reply() {
  body="$2"
  printf 'HTTP/1.0 %s\\r\\nContent-Type: application/json\\r\\nContent-Length: %s\\r\\n' \\
    "$1" "${#body}"
  printf 'Connection: close\\r\\n\\r\\n%s' "$body"
}
dev="$VLLM_SERVER_DEV_MODE"
case "$method $path" in
  "GET /health") reply "200 OK" "" ;;
  "GET /v1/models") reply "200 OK" '{"object":"list","data":[{"id":"'"${MODEL:-m}"'"}]}' ;;
  "GET /is_sleeping")
    if [ -e /tmp/sleeping ]; then asleep=true; else asleep=false; fi
    [ "$dev" = 1 ] && reply "200 OK" '{"is_sleeping":'$asleep'}' || reply "404 Not Found" "" ;;
  "POST /sleep")
    [ "$dev" = 1 ] || { reply "404 Not Found" '{"detail":"Not Found"}'; exit 0; }
    sleep 0.2; : > /tmp/sleeping; echo "fake-vllm: asleep" >&2
    reply "200 OK" '{"status":"sleeping","level":1}' ;;
  "POST /wake_up")
    [ "$dev" = 1 ] || { reply "404 Not Found" '{"detail":"Not Found"}'; exit 0; }
    sleep 0.3; rm -f /tmp/sleeping; echo "fake-vllm: awake" >&2
    reply "200 OK" '{"status":"awake"}' ;;
  *) reply "404 Not Found" '{"detail":"Not Found"}' ;;
esac
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
        for applet in ("sh", "sleep", "httpd", "mkdir", "echo", "nc", "printf", "rm", "["):
            (root / "bin" / applet).symlink_to("busybox")
        for name, text in (("fake-vllm", FAKE_VLLM), ("vllm-handler", VLLM_HANDLER)):
            script = root / name
            script.write_text(text)
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
        # The image answers /health, not tokens: it plays vLLM's runtime, not its engine.
        "probe": "health",
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
