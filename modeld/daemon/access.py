"""Who is calling (SO_PEERCRED, SO_PEERGROUPS) and whether they may change anything."""

from __future__ import annotations

import array
import errno
import grp
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modeld.core.errors import ConfigError


@dataclass(frozen=True)
class Caller:
    """A peer on the socket as the kernel vouches for it."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    groups: frozenset[int] = field(default_factory=frozenset)

    def as_log(self) -> dict[str, int]:
        """The fields every mutation logs."""
        return {
            k: v
            for k, v in (("pid", self.pid), ("uid", self.uid), ("gid", self.gid))
            if v is not None
        }


# Linux's SO_PEERGROUPS (4.13 and later; not named by Python 3.11's socket module): the
# peer's supplementary groups as they were when it connected.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
# The most groups a process may have (NGROUPS_MAX), as gid_t.
MAX_GROUP_BYTES = 65536 * 4


def _peer_groups(sock: socket.socket) -> frozenset[int] | None:
    """The peer's supplementary groups as the kernel recorded them at connect(); None
    where the kernel does not say (before Linux 4.13)."""
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < MAX_GROUP_BYTES:
                size = MAX_GROUP_BYTES  # more groups than asked room for
                continue
            return None
        groups = array.array("I")
        groups.frombytes(raw[: len(raw) - len(raw) % groups.itemsize])
        return frozenset(groups)


def _supplementary_groups(pid: int) -> frozenset[int]:
    """The caller's supplementary groups from /proc, where SO_PEERGROUPS is not there
    (read now: a PID that was reused names another process)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def peer_credentials(sock: socket.socket | None) -> Caller:
    """The caller's pid, uid, gid and groups (an empty Caller if the kernel will not say)."""
    if sock is None:
        return Caller()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return Caller()
    pid, uid, gid = struct.unpack("3i", raw)
    groups = _peer_groups(sock)
    if groups is None:
        groups = _supplementary_groups(pid)
    return Caller(pid, uid, gid, groups | {gid})


class AccessPolicy:
    """Mutating methods are open to all, or only to allowed uids and groups (and root)."""

    def __init__(self, allow_uids: Sequence[int] = (), allow_groups: Sequence[str] = ()) -> None:
        self._uids = frozenset(allow_uids)
        gids = set()
        for name in allow_groups:
            try:
                gids.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                raise ConfigError(
                    f"daemon.allow_groups: no such group {name!r}",
                    fields=["daemon.allow_groups"],
                ) from None
        self._gids = frozenset(gids)

    @property
    def restricted(self) -> bool:
        """Whether any restriction is configured."""
        return bool(self._uids or self._gids)

    def may_mutate(self, caller: Caller) -> bool:
        """True when `caller` may switch, start, stop or restart."""
        if not self.restricted or caller.uid == 0:
            return True
        return caller.uid in self._uids or bool(caller.groups & self._gids)
