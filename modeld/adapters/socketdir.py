"""Directories that hold sockets: checked before anything is bound in them.

Whoever owns a directory can replace what is in it: a socket bound in a directory that
another user owns (or may write to) can be swapped for theirs, and every client then
talks to an impostor. So the daemon binds only in a directory owned by itself or root
and writable by no one else, and it makes the backends' socket directories itself:
owned by it, in the group that may connect (the gateway's), mode 2750 (the group
inherited by what is made inside), so no other local user can reach a backend.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from modeld.core.errors import ConfigError

BACKEND_DIR_MODE = 0o2750


def check_dir(directory: Path, purpose: str) -> None:
    """ConfigError unless `directory` is owned by this process's user or root and no one
    else may replace what is in it (group- or world-writable only with the sticky bit,
    as /tmp is)."""
    info = directory.stat()
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise ConfigError(
            f"{directory} (for {purpose}) is owned by uid {info.st_uid}, not by modeld "
            f"(uid {me}) or root: refusing to use it",
            directory=str(directory),
        )
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not (info.st_mode & stat.S_ISVTX):
        raise ConfigError(
            f"{directory} (for {purpose}) is writable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}): refusing to use it",
            directory=str(directory),
        )


def group_id(group: str | None) -> int | None:
    """The gid of `group`, None for none; ConfigError naming it when it does not exist."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"group {group!r} does not exist", group=group) from None


def clear_stale(path: Path) -> None:
    """Remove a socket file a backend left at `path` (vLLM binds --uds without removing
    one, so its next start would fail with "address in use"); ConfigError when `path`
    is something other than a socket."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(
            f"{path} exists and is not a socket: refusing to start a backend there",
            path=str(path),
        )
    path.unlink(missing_ok=True)


def prepare_backend_socket(path: Path, group: str | None) -> None:
    """The backend's socket directory made or checked, and any old socket at `path`
    removed: what the daemon does before each start of a `unix:` backend."""
    backend_dir(path.parent, group)
    clear_stale(path)


def backend_dir(directory: Path, group: str | None) -> None:
    """Make `directory` for backends' sockets (owned by us, `group`, mode 2750), or check
    that an existing one is ours with no access for other users; ConfigError otherwise."""
    gid = group_id(group)
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        if gid is not None:
            os.chown(directory, -1, gid)
        os.chmod(directory, BACKEND_DIR_MODE)
    info = directory.stat()
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{directory} (backend sockets) is owned by uid {info.st_uid}, not by modeld "
            f"(uid {os.geteuid()}): refusing to use it",
            directory=str(directory),
        )
    if stat.S_IMODE(info.st_mode) & 0o027:
        raise ConfigError(
            f"{directory} (backend sockets) has mode {stat.S_IMODE(info.st_mode):o}: other "
            "users could reach the backends (want 2750 or stricter)",
            directory=str(directory),
        )
    if gid is not None and info.st_gid != gid:
        raise ConfigError(
            f"{directory} (backend sockets) has group {info.st_gid}, not {group}: the "
            "gateway could not reach the backends",
            directory=str(directory),
        )
