"""Free TCP ports on loopback for fake backends, and waiting for a Unix socket to listen."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    path: Path, timeout: float = 30.0, alive: Callable[[], bool] = lambda: True
) -> None:
    """Return once a Unix socket at `path` accepts connections (its file appears at bind,
    before listen, so the file alone is not enough)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        if not alive() or time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {path}")
        time.sleep(0.01)
