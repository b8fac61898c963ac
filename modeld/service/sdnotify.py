"""The systemd notify protocol, spoken directly over the datagram socket in NOTIFY_SOCKET.

No libsystemd needed: a message is newline-separated KEY=VALUE pairs sent as one
datagram. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("modeld.service.sdnotify")


class Notifier:
    """Sends READY, STATUS, WATCHDOG and STOPPING to systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec = 0
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self._watchdog_usec = int(usec)

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return bool(self._address)

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""
        return self._watchdog_usec / 2e6 if self._watchdog_usec else None

    def send(self, **fields: str) -> None:
        """Send one message; a lost datagram is logged, never fatal."""
        if not self.enabled:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sdnotify.failed", error=str(exc))

    def ready(self, status: str) -> None:
        """READY=1: the socket answers and the first reconcile is done."""
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, text: str) -> None:
        """The line `systemctl status` shows."""
        self.send(STATUS=text)

    def watchdog(self) -> None:
        """The event loop is alive."""
        self.send(WATCHDOG="1")

    def reloading(self) -> None:
        """RELOADING=1 while a new config is read."""
        self.send(RELOADING="1")

    def stopping(self) -> None:
        """STOPPING=1: shutting down."""
        self.send(STOPPING="1", STATUS="stopping")
