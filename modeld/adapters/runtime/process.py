"""The process runtime: each backend is a child of the daemon, under its own reaper.

Children cannot be adopted by a later daemon the way containers can (their exit code
and output belong to the parent), so they live and die with the daemon: on a clean
exit it stops them (close()), and if it is killed outright the kernel sends each
reaper SIGTERM (PR_SET_PDEATHSIG), which ends its backend's whole tree.

Each backend runs under `reaper.py` (see there), a subreaper: whatever the backend
starts stays in the reaper's tree, even a child that leaves its session, so a stop
ends all of it. The daemon signals a reaper only through a pidfd, never by PID: a
reaped backend's PID may belong to someone else by then.

Output is read in bounded chunks (a 70,000-character line must not stop the reader
and, with it, the backend, which would block on a full pipe); lines are kept cut to
`MAX_LINE_CHARS`. Every wait on a child has a deadline.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from modeld.adapters.backendkeys import launch_environment, prepare_cache
from modeld.adapters.runtime import reaper
from modeld.adapters.runtime.base import LOG_LINES, MAX_LINE_CHARS, BackendState, BackendStatus
from modeld.core.config import ModelConfig
from modeld.core.errors import LoadFailed, OperationFailed
from modeld.core.queues import DropOldest

# Backends create files (their Unix socket) for owner and group only.
BACKEND_UMASK = 0o007
log = structlog.get_logger(__name__)
KEPT_LINES = 200
READ_CHUNK = 64 * 1024
# Beyond stop_timeout_s (the reaper's own grace period before SIGKILL): how long the
# reaper may take to kill and reap, and how long the output may take to reach EOF.
REAP_MARGIN_S = 5.0
DRAIN_S = 2.0
# The environment a backend gets from the daemon's own, besides its declared `env`.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
# The reaper's source, read once: a backend's start runs it with `python -c`, so a
# reinstall of the package under a running daemon (its files gone for a moment, or
# moved) never fails the next start.
REAPER_SOURCE = Path(reaper.__file__).read_text()


@dataclass
class _Child:
    process: asyncio.subprocess.Process
    pidfd: int | None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=KEPT_LINES))
    reader: asyncio.Task[None] | None = None
    partial: str = ""
    overflow: int = 0
    followers: set[Follower] = field(default_factory=set)
    ended: bool = False

    def signal(self, sig: signal.Signals) -> None:
        """Signal the reaper through its pidfd: never a PID that may have been reused."""
        if self.pidfd is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def keep(self, chunk: str) -> None:
        """Split output into lines, each cut to MAX_LINE_CHARS; the rest of a long line is
        only counted as it arrives (so memory stays bounded however long it gets)."""
        *ended, rest = chunk.split("\n")
        for piece in ended:
            self._add(piece)
            self._line(_cut(self.partial, self.overflow))
            self.partial, self.overflow = "", 0
        self._add(rest)

    def _line(self, line: str) -> None:
        self.output.append(line)
        for follower in self.followers:
            follower.offer(line)

    def _add(self, piece: str) -> None:
        room = MAX_LINE_CHARS - len(self.partial)
        self.partial += piece[:room]
        self.overflow += max(0, len(piece) - room)

    def eof(self) -> None:
        """The output ended: keep the last unfinished line, and tell the followers."""
        if self.partial:
            self._line(_cut(self.partial, self.overflow))
            self.partial, self.overflow = "", 0
        self.ended = True
        for follower in self.followers:
            follower.end()

    def close(self) -> None:
        """End the output (if the reader could not) and release the pidfd."""
        self.eof()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Follower:
    """One `logs -f`: a bounded queue of new lines. A reader that falls behind loses the
    oldest lines, never the backend's or the daemon's time, and is told how many."""

    LIMIT = 1000

    def __init__(self) -> None:
        # None marks the end (queued beyond the bound: the last LIMIT lines stay).
        self._lines: DropOldest[str | None] = DropOldest(self.LIMIT)

    def offer(self, line: str) -> None:
        """Queue a line (never blocks: the oldest goes when full)."""
        self._lines.offer(line)

    def end(self) -> None:
        """The backend ended: what is queued is the last of it."""
        self._lines.finish(None)

    async def lines(self) -> AsyncIterator[str]:
        """Each queued line as it comes, until the end."""
        while True:
            line = await self._lines.get()
            if dropped := self._lines.take_dropped():
                yield f"… [{dropped} lines dropped: the reader fell behind]"
            if line is None:
                return
            yield line


def _cut(line: str, overflow: int) -> str:
    line = line.rstrip("\r")
    return f"{line}… [{overflow} more characters]" if overflow else line


def resolve_command(argv0: str) -> str | None:
    """Find argv[0] on PATH, then beside this Python (a venv's bin/ need not be on PATH)."""
    search = os.pathsep.join(
        filter(None, [os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    )
    return shutil.which(argv0, path=search)


def device_env(gpus: Sequence[int]) -> dict[str, str]:
    """The devices a backend may use: the model's `gpus`, numbered as NVML numbers them
    (and the docker runtime's device request), not in CUDA's default fastest-first
    order; without it every backend would start on device 0."""
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in gpus),
    }


def backend_env(
    declared: Mapping[str, str], passed: Sequence[str], source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A backend's whole environment: a few basics and the `pass_env` names from the
    daemon's, then what the model declares. Nothing else of the daemon's (its socket
    activation, its credentials, NOTIFY_SOCKET) reaches a backend."""
    environ = os.environ if source is None else source
    base = {name: environ[name] for name in (*BASE_ENV, *passed) if name in environ}
    return {**base, **declared}


class ProcessRuntime:
    """A Runtime that runs each backend as a child process tree under a reaper."""

    name = "process"

    def __init__(self, pass_env: Sequence[str] = ()) -> None:
        self._children: dict[str, _Child] = {}
        self._pass_env = tuple(pass_env)
        extra = set(os.getgroups()) - {os.getegid()}
        if extra and os.geteuid() != 0:
            # The reaper drops them when it may (root, CAP_SETGID); here it may not.
            log.warning(
                "process.groups_inherited",
                groups=sorted(extra),
                hint="backends keep the daemon's supplementary groups (docker is "
                "root-equivalent): run a process-runtime daemon without them",
            )

    async def start(self, model: ModelConfig) -> BackendStatus:
        """Spawn the model's command under its reaper, in a new session."""
        command = model.launch_command
        assert command is not None  # the config validator guarantees it
        executable = resolve_command(command[0])
        if executable is None:
            raise LoadFailed(
                f"{model.name}: command not found: {command[0]}",
                model=model.name,
                reason="command not found",
            )
        await asyncio.to_thread(prepare_cache, model)
        env = await asyncio.to_thread(launch_environment, model)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                "-c",
                REAPER_SOURCE,
                str(os.getpid()),
                str(model.stop_timeout_s),
                "--",
                executable,
                *command[1:],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                # What a backend creates (its Unix socket above all) is for its owner and
                # group (the gateway's) only.
                umask=BACKEND_UMASK,
                env=backend_env({**device_env(model.gpus), **env}, self._pass_env),
                cwd=model.cwd,
            )
        except OSError as exc:
            raise LoadFailed(
                f"{model.name}: cannot start {command[0]}: {exc.strerror}",
                model=model.name,
                reason=str(exc),
            ) from None
        try:
            pidfd: int | None = os.pidfd_open(process.pid)
        except ProcessLookupError:
            pidfd = None  # gone already: there is nothing left to signal
        child = _Child(process, pidfd)
        child.reader = asyncio.create_task(self._read_output(child))
        self._children[model.name] = child
        return BackendStatus(BackendState.RUNNING, pid=process.pid)

    @staticmethod
    async def _read_output(child: _Child) -> None:
        stream = child.process.stdout
        assert stream is not None
        # Incremental: a character split between two chunks is decoded whole.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := await stream.read(READ_CHUNK):
            child.keep(decoder.decode(chunk))
        child.keep(decoder.decode(b"", final=True))
        child.eof()

    async def stop(self, model: ModelConfig) -> None:
        """SIGTERM the backend's tree (the reaper SIGKILLs it after `stop_timeout_s`), and
        make sure of it: past the deadline the daemon kills the tree itself."""
        child = self._children.get(model.name)
        if child is None:
            return
        child.signal(signal.SIGTERM)
        if not await self._reaped(child, model.stop_timeout_s + REAP_MARGIN_S):
            log.warning("process.kill", model=model.name, pid=child.process.pid)
            self._kill_tree(child)
            if not await self._reaped(child, REAP_MARGIN_S):
                raise OperationFailed(
                    f"{model.name}: its processes did not exit, even after SIGKILL",
                    model=model.name,
                    reason="did not exit",
                )
        await self._drained(child)

    @staticmethod
    def _kill_tree(child: _Child) -> None:
        # The reaper is our unreaped child, so its PID is still its own: its tree is safe
        # to walk. Kill the tree first, then the reaper, so nothing is orphaned to init.
        if child.process.returncode is None:
            reaper.signal_tree(child.process.pid, signal.SIGKILL)
        child.signal(signal.SIGKILL)

    @staticmethod
    async def _reaped(child: _Child, timeout: float) -> bool:
        try:
            await asyncio.wait_for(child.process.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @staticmethod
    async def _drained(child: _Child) -> None:
        """Let the reader reach EOF (the last lines are what a failure report needs); a
        pipe that something outside the tree still holds open is given up on."""
        if child.reader is not None:
            done, _ = await asyncio.wait({child.reader}, timeout=DRAIN_S)
            if not done:
                child.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.reader
        child.close()

    async def inspect(self, model: ModelConfig) -> BackendStatus:
        """RUNNING while the child lives, EXITED with its code after, ABSENT if never started."""
        child = self._children.get(model.name)
        if child is None:
            return BackendStatus(BackendState.ABSENT)
        code = child.process.returncode
        if code is None:
            return BackendStatus(BackendState.RUNNING, pid=child.process.pid)
        return BackendStatus(BackendState.EXITED, pid=None, exit_code=code)

    async def wait_exit(self, model: ModelConfig) -> BackendStatus:
        """Wait for the child to exit (callers race this against their own deadline)."""
        child = self._children.get(model.name)
        if child is None:
            return BackendStatus(BackendState.ABSENT)
        code = await child.process.wait()
        await self._drained(child)
        return BackendStatus(BackendState.EXITED, exit_code=code)

    async def logs(self, model: ModelConfig, lines: int = LOG_LINES) -> list[str]:
        """The child's last output lines, the unfinished one included."""
        child = self._children.get(model.name)
        if child is None:
            return []
        # The line being written counts too (a progress bar may never end its line).
        unfinished = [_cut(child.partial, child.overflow)] if child.partial else []
        return [*child.output, *unfinished][-lines:]

    async def follow(self, model: ModelConfig, lines: int = LOG_LINES) -> AsyncIterator[str]:
        """The last `lines` lines, then each new one until the child's output ends."""
        child = self._children.get(model.name)
        if child is None:
            return
        # The tail and the follower are taken in one step: no line is lost or doubled.
        follower = Follower()
        tail = [*child.output][-lines:]
        if child.ended:
            follower.end()
        else:
            child.followers.add(follower)
        try:
            for line in tail:
                yield line
            async for line in follower.lines():
                yield line
        finally:
            child.followers.discard(follower)

    async def close(self) -> None:
        """Stop every child: a process backend cannot outlive the daemon that watches it."""
        for child in self._children.values():
            child.signal(signal.SIGTERM)
        for name, child in list(self._children.items()):
            if not await self._reaped(child, 10 + REAP_MARGIN_S):
                self._kill_tree(child)
                await self._reaped(child, REAP_MARGIN_S)
            await self._drained(child)
            log.info("process.stopped_at_exit", model=name, exit_code=child.process.returncode)
