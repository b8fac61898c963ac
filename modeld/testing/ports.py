"""Free TCP ports on loopback, and waiting on what other processes do."""

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


def wait_until(
    check: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll an outside process's observable state until `check` holds; fail naming `what`
    at the deadline. (The process is not ours to get an event from.)"""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(interval)


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


def wait_listening(
    path: Path, timeout: float = 30.0, alive: Callable[[], bool] = lambda: True
) -> None:
    """Return once a Unix socket at `path` accepts connections (its file appears at bind,
    before listen, so the file alone is not enough); fail at once if `alive` turns false."""

    def listening() -> bool:
        assert alive(), f"the process that should listen on {path} exited"
        return _connects(path)

    wait_until(listening, f"something listening on {path}", timeout, interval=0.01)
