"""Socket activation: the listening socket systemd passes in (LISTEN_FDS / LISTEN_PID)."""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import structlog

from modeld.core.errors import ConfigError

log = structlog.get_logger("modeld.daemon.listen")

SD_LISTEN_FDS_START = 3


def inherited_socket(environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The socket systemd passed to this process, or None when started without one.

    The variables are removed afterwards, so backends started later do not think the
    socket is theirs (as sd_listen_fds(3) does with unset_environment).
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(env.get("LISTEN_FDS", "0") or 0)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if count < 1:
        return None
    if count > 1:
        log.warning("listen.extra_sockets_ignored", passed=count)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ConfigError(
            "systemd passed a socket that is not a Unix stream socket; modeld.socket must "
            "use ListenStream= with a path",
        )
    sock.setblocking(False)
    return sock
