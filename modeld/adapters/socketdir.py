"""Directories that hold sockets: checked before anything is bound in them.

Whoever can change a path can send its clients elsewhere: a socket bound in a directory
that another user owns (or may write to) can be swapped for theirs, and a symbolic link
another user owns (in /tmp, say) can be pointed at their directory after it was
checked, so every client then talks to an impostor and backends bind where it listens.
So the path to a socket is walked from `/` one component at a time, never following a
link blindly: each directory must be owned by root or modeld and writable by no one
else (sticky excepted, as /tmp is), each link owned by root or modeld (in a sticky
directory anyone may own an entry); the walk holds a descriptor of each directory it
checked and makes and binds what it must relative to the last one, so the checked path
is the one used. The backends' socket directories modeld makes itself: owned by it, in
the group that may connect (the gateway's), mode 2750 (the group inherited by what is
made inside), so no other local user can reach a backend.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from collections import deque
from pathlib import Path

from modeld.core.config import ModelConfig
from modeld.core.errors import ConfigError

BACKEND_DIR_MODE = 0o2750
# Links followed on one path at most (the kernel's own limit).
MAX_LINKS = 40
# A directory the walk makes on the way (its group and mode are the defaults').
MADE_DIR_MODE = 0o755


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _refuse(path: Path, purpose: str, where: Path, why: str) -> ConfigError:
    return ConfigError(
        f"refusing {path} (for {purpose}): {where} {why}, so another user could change "
        "where the path leads",
        directory=str(where),
    )


def open_dir(directory: Path, purpose: str, make: bool = False) -> int:
    """A descriptor (O_PATH) of `directory`, reached from `/` without following any link
    another user could change, each directory on the way owned by this process's user or
    root and writable by no one else (sticky excepted), each link owned by one of them;
    missing directories are made when `make`. ConfigError naming the component, its
    owner and why otherwise. The caller closes it."""
    me = os.geteuid()
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open("/", flags)
    where, links = Path("/"), 0
    pending = deque(Path(os.path.abspath(directory)).parts[1:])
    try:
        _check_dir(os.fstat(fd), directory, purpose, where, me)
        while pending:
            name = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                # Back up by walking again from the top: the parent was checked already.
                pending.extendleft(reversed(where.parent.parts[1:]))
                os.close(fd)
                fd, where = os.open("/", flags), Path("/")
                continue
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not make:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, MADE_DIR_MODE, dir_fd=fd)
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            here = where / name
            if stat.S_ISLNK(info.st_mode):
                if info.st_uid not in (me, 0):
                    raise _refuse(
                        directory,
                        purpose,
                        here,
                        f"is a symbolic link owned by {_owner(info.st_uid)}",
                    )
                links += 1
                if links > MAX_LINKS:
                    raise _refuse(directory, purpose, here, "leads through too many links")
                target = Path(os.readlink(name, dir_fd=fd))
                pending.extendleft(
                    reversed(target.parts[1:] if target.is_absolute() else target.parts)
                )
                if target.is_absolute():
                    os.close(fd)
                    fd, where = os.open("/", flags), Path("/")
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise ConfigError(
                    f"refusing {directory} (for {purpose}): {here} is not a directory",
                    directory=str(here),
                )
            _check_dir(info, directory, purpose, here, me)
            following = os.open(name, flags, dir_fd=fd)
            opened = os.fstat(following)
            os.close(fd)
            fd, where = following, here
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise _refuse(directory, purpose, here, "changed while it was checked")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_dir(info: os.stat_result, path: Path, purpose: str, where: Path, me: int) -> None:
    if info.st_uid not in (me, 0):
        raise _refuse(path, purpose, where, f"is owned by {_owner(info.st_uid)}")
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not (info.st_mode & stat.S_ISVTX):
        raise _refuse(
            path,
            purpose,
            where,
            f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o})",
        )


def in_dir(fd: int, name: str) -> str:
    """A path to `name` in the directory `fd` holds, for calls that take only a path
    (bind, connect): it names the directory checked, whatever its path leads to now."""
    return f"/proc/self/fd/{fd}/{name}"


def group_id(group: str | None) -> int | None:
    """The gid of `group`, None for none; ConfigError naming it when it does not exist."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"group {group!r} does not exist", group=group) from None


def clear_stale(fd: int, name: str, shown: Path) -> None:
    """Remove a socket file a backend left as `name` in the directory `fd` (vLLM binds
    --uds without removing one, so its next start would fail with "address in use");
    ConfigError when it is something other than a socket."""
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(
            f"{shown} exists and is not a socket: refusing to start a backend there",
            path=str(shown),
        )
    os.unlink(name, dir_fd=fd)


def private_dir(path: Path) -> Path:
    """Where a container binds its socket `path`: a directory of its own beside it,
    mounted at `path`'s folder inside the container (so it sees no other backend's
    socket); `path` itself is then a link into it."""
    return path.parent / f".{path.name}.d"


def prepare_backend_socket(model: ModelConfig, group: str | None) -> None:
    """The backend's socket directory made or checked (and the path to it), and any old
    socket at its path removed: what the daemon does before each start of a `unix:`
    backend. The backend binds by path, which no other user can change once checked. A
    container modeld makes gets a directory of its own (private_dir), with the socket's
    path a link into it."""
    path = model.socket_path
    assert path is not None, "a unix: backend"
    gid = group_id(group)
    fd = backend_dir(path.parent, group)
    try:
        if not (model.runtime == "docker" and model.image is not None):
            clear_stale(fd, path.name, path)
            return
        inner = private_dir(path)
        own = _backend_subdir(fd, inner.name, inner, group, gid)
        try:
            clear_stale(own, path.name, path)
        finally:
            os.close(own)
        _replace_link(fd, path.name, f"{inner.name}/{path.name}", path)
    finally:
        os.close(fd)


def _replace_link(fd: int, name: str, target: str, shown: Path) -> None:
    """`name` in the directory `fd` made a link to `target`, replacing a link or a socket
    left there (anything else is refused)."""
    with contextlib.suppress(FileNotFoundError):
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not (stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode)):
            raise ConfigError(
                f"{shown} exists and is not a socket: refusing to start a backend there",
                path=str(shown),
            )
        os.unlink(name, dir_fd=fd)
    os.symlink(target, name, dir_fd=fd)


def backend_dir(directory: Path, group: str | None) -> int:
    """Make `directory` for backends' sockets (owned by us, `group`, mode 2750), or check
    that an existing one is ours with no access for other users, the path to it checked
    as open_dir does; its descriptor (the caller closes it). ConfigError otherwise."""
    parent = open_dir(directory.parent, "backend sockets", make=True)
    try:
        return _backend_subdir(parent, directory.name, directory, group, group_id(group))
    finally:
        os.close(parent)


def _backend_subdir(parent: int, name: str, shown: Path, group: str | None, gid: int | None) -> int:
    """`name` in the directory `parent`, made for backends' sockets or checked as
    backend_dir says; its descriptor."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        made = False
    else:
        made = True
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"{shown} (backend sockets) is not a directory: refusing to use it",
            directory=str(shown),
        )
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        if made:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, BACKEND_DIR_MODE)
        _check_backend_dir(os.fstat(fd), shown, group, gid)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_backend_dir(
    info: os.stat_result, directory: Path, group: str | None, gid: int | None
) -> None:
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{directory} (backend sockets) is owned by {_owner(info.st_uid)}, not by modeld "
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
