"""The process runtime: each backend is a child process group of the daemon.

Children cannot be adopted by a later daemon the way containers can (their exit code
and output belong to the parent), so they live and die with the daemon: on a clean
exit it stops them (close()), and if it is killed outright the kernel sends each
child SIGTERM (PR_SET_PDEATHSIG). Nothing is left holding GPU memory unwatched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from modeld.config import ModelConfig
from modeld.errors import LoadFailed
from modeld.runtime.base import LOG_LINES, BackendState, BackendStatus

log = structlog.get_logger(__name__)
KEPT_LINES = 200


@dataclass
class _Child:
    process: asyncio.subprocess.Process
    output: deque[str] = field(default_factory=lambda: deque(maxlen=KEPT_LINES))
    reader: asyncio.Task[None] | None = None


def resolve_command(argv0: str) -> str | None:
    """Find argv[0] on PATH, then beside this Python (a venv's bin/ need not be on PATH)."""
    search = os.pathsep.join(
        filter(None, [os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    )
    return shutil.which(argv0, path=search)


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_daemon(daemon_pid: int) -> None:
    """In the child before exec: get SIGTERM if the daemon dies, even by SIGKILL."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != daemon_pid:  # the daemon died before prctl took effect
        os._exit(1)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessRuntime:
    """A Runtime that runs each backend as a child process group."""

    name = "process"

    def __init__(self) -> None:
        self._children: dict[str, _Child] = {}

    async def start(self, model: ModelConfig) -> BackendStatus:
        """Spawn the model's command in a new session (its own process group)."""
        command = model.launch_command
        assert command is not None  # the config validator guarantees it
        executable = resolve_command(command[0])
        if executable is None:
            raise LoadFailed(
                f"{model.name}: command not found: {command[0]}",
                model=model.name,
                reason="command not found",
            )
        try:
            process = await asyncio.create_subprocess_exec(
                executable,
                *command[1:],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_daemon, os.getpid()),
                env={**os.environ, **model.launch_env},
                cwd=model.cwd,
            )
        except OSError as exc:
            raise LoadFailed(
                f"{model.name}: cannot start {command[0]}: {exc.strerror}",
                model=model.name,
                reason=str(exc),
            ) from None
        child = _Child(process)
        child.reader = asyncio.create_task(self._read_output(model.name, child))
        self._children[model.name] = child
        return BackendStatus(BackendState.RUNNING, pid=process.pid)

    async def _read_output(self, name: str, child: _Child) -> None:
        assert child.process.stdout is not None
        async for raw in child.process.stdout:
            child.output.append(raw.decode(errors="replace").rstrip())

    async def stop(self, model: ModelConfig) -> None:
        """SIGTERM the whole group, SIGKILL after `stop_timeout_s`, then reap."""
        child = self._children.get(model.name)
        if child is None:
            return
        process = child.process
        if process.returncode is None:
            _kill_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), model.stop_timeout_s)
            except TimeoutError:
                log.warning("process.kill", model=model.name, pid=process.pid)
                _kill_group(process.pid, signal.SIGKILL)
                await process.wait()
        # Children that outlived their leader would keep GPU memory: kill the group.
        _kill_group(process.pid, signal.SIGKILL)
        if child.reader is not None:
            await child.reader

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
        """Wait for the child to exit."""
        child = self._children.get(model.name)
        if child is None:
            return BackendStatus(BackendState.ABSENT)
        code = await child.process.wait()
        if child.reader is not None:
            # The last lines are what a failure report needs: read them all.
            await child.reader
        return BackendStatus(BackendState.EXITED, exit_code=code)

    async def logs(self, model: ModelConfig, lines: int = LOG_LINES) -> list[str]:
        """The child's last output lines."""
        child = self._children.get(model.name)
        return list(child.output)[-lines:] if child else []

    async def close(self) -> None:
        """Stop every child: a process backend cannot outlive the daemon that watches it."""
        for child in list(self._children.values()):
            process = child.process
            if process.returncode is None:
                _kill_group(process.pid, signal.SIGTERM)
        for name, child in list(self._children.items()):
            process = child.process
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                _kill_group(process.pid, signal.SIGKILL)
                await process.wait()
            _kill_group(process.pid, signal.SIGKILL)
            log.info("process.stopped_at_exit", model=name, exit_code=process.returncode)
