"""The socket server: NDJSON JSON-RPC over a Unix stream socket (rpc.py answers each
line). Every client is bounded: tasks and unread answers per connection, a deadline on
unfinished lines and on answers it does not read, a per-uid share of the connections
with slots kept for root and allowed callers, one subscription per connection."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from modeld.adapters.socketdir import in_dir, open_dir
from modeld.core.config import DaemonConfig
from modeld.core.errors import LimitReached, SocketInUse, TooManyConnections
from modeld.daemon.access import AccessPolicy, Caller, peer_credentials
from modeld.daemon.connection import Connection
from modeld.daemon.dispatch import Context
from modeld.daemon.rpc import (
    INVALID_REQUEST,
    MAX_MESSAGE_BYTES,
    answer,
    answer_now,
    error_line,
    is_acquire,
    may_take_long,
    parse,
)
from modeld.engine.engine import Engine

log = structlog.get_logger("modeld.daemon.server")

# Per connection: requests that may take long run as tasks, at most this many at once;
# past that the connection is not read until one ends (a client cannot pile up work).
MAX_TASKS_PER_CONNECTION = 8
# Acquires only wait (for a load, or their turn), so a router may have many at once on
# one connection; past this many the next is refused (`limit_reached`), never queued, so
# the connection is always read and its releases always reach the daemon.
MAX_ACQUIRES_PER_CONNECTION = 4096
MAX_BATCH = 100
LINES_PER_TURN = 32
READ_CHUNK = 64 * 1024
# A line begun must be finished within this; an answer the client does not read within
# WRITE_TIMEOUT_S (its buffers full) ends the connection.
LINE_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
# Slots kept for root and the allowed callers, and the share of one other uid.
RESERVED_CONNECTIONS = 16
MAX_CONNECTIONS_PER_UID = 32


@dataclass
class Limits:
    """What one connection, and one uid, may hold."""

    max_connections: int = 256
    per_uid: int = MAX_CONNECTIONS_PER_UID
    reserved: int = RESERVED_CONNECTIONS
    tasks: int = MAX_TASKS_PER_CONNECTION
    acquires: int = MAX_ACQUIRES_PER_CONNECTION
    line_timeout_s: float = LINE_TIMEOUT_S
    write_timeout_s: float = WRITE_TIMEOUT_S


def limits_for(daemon: DaemonConfig) -> Limits:
    """The limits a daemon's settings give its socket."""
    return Limits(
        max_connections=daemon.max_connections,
        per_uid=daemon.max_connections_per_uid,
        reserved=min(daemon.reserved_connections, daemon.max_connections),
        line_timeout_s=daemon.client_line_timeout_s,
        write_timeout_s=daemon.client_write_timeout_s,
    )


class RpcServer:
    """Serves JSON-RPC on a Unix socket; each connection, and each request, on its own."""

    def __init__(
        self,
        engine: Engine,
        path: Path,
        mode: int = 0o660,
        group: str | None = None,
        policy: AccessPolicy | None = None,
        max_connections: int = 256,
        limits: Limits | None = None,
    ) -> None:
        self._engine = engine
        self._policy = policy or AccessPolicy()
        self._limits = limits or Limits(
            max_connections=max_connections,
            reserved=min(RESERVED_CONNECTIONS, max_connections // 4),
        )
        self._connections = 0
        self._open: set[Connection] = set()
        self._per_uid: Counter[int | None] = Counter()
        self._path = path
        self._mode = mode
        self._group = group
        self._server: asyncio.Server | None = None
        self._requests: set[asyncio.Task[None]] = set()
        # The socket file this server made (device, inode): removed at exit only if the
        # path still names it, never another daemon's socket bound there meanwhile.
        self._made: tuple[int, int] | None = None
        # The directory the socket is in, as checked (socketdir.open_dir): everything is
        # made, renamed and removed relative to it.
        self._dir: int | None = None

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return self._connections

    async def start(self, inherited: socket.socket | None = None) -> None:
        """Listen on the socket systemd passed in, else on the socket path (replacing a
        stale socket but never a live one)."""
        if inherited is not None:
            # systemd owns this socket, its mode and its group: serve it, never remove it.
            self._server = await asyncio.start_unix_server(self._connection, sock=inherited)
            log.info("socket.listening", path=str(inherited.getsockname()), activated=True)
            return
        self._dir = open_dir(self._path.parent, "the daemon's socket", make=True)
        name = self._path.name
        with contextlib.suppress(FileNotFoundError):
            os.stat(name, dir_fd=self._dir, follow_symlinks=False)
            if await _answers(in_dir(self._dir, name)):
                raise SocketInUse(
                    f"{self._path} is in use by another process (is modeld running?)",
                    socket=str(self._path),
                )
            os.unlink(name, dir_fd=self._dir)
        sock = self._bind_private(self._dir)
        self._server = await asyncio.start_unix_server(self._connection, sock=sock)
        log.info("socket.listening", path=str(self._path))

    def _bind_private(self, directory: int) -> socket.socket:
        """Bind beside the path, set mode and group, listen, then rename into place: the
        socket is never reachable under its name with the wrong permissions."""
        name = self._path.name
        temporary = f".{name}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=directory)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(in_dir(directory, temporary))
            os.chmod(temporary, self._mode, dir_fd=directory)
            if self._group:
                try:
                    gid = grp.getgrnam(self._group).gr_gid
                    os.chown(temporary, -1, gid, dir_fd=directory, follow_symlinks=False)
                except (KeyError, PermissionError) as exc:
                    log.warning("socket.group_not_set", group=self._group, error=str(exc))
            sock.listen(socket.SOMAXCONN)
            os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=directory)
            raise
        made = os.stat(name, dir_fd=directory, follow_symlinks=False)
        self._made = (made.st_dev, made.st_ino)
        sock.setblocking(False)
        return sock

    @property
    def address(self) -> str:
        """Where clients connect: the socket systemd passed in, or the path."""
        if self._made is not None:
            return str(self._path)
        sockets = self._server.sockets if self._server else ()
        return str(sockets[0].getsockname()) if sockets else str(self._path)

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to `grace_s`), remove the socket."""
        try:
            if self._server is not None:
                self._server.close()
                if self._requests:
                    await asyncio.wait(self._requests, timeout=grace_s)
                # Then the clients are told, by their connection closing, that this
                # daemon is gone (a gateway reconnects to the next one).
                for connection in list(self._open):
                    connection.writer.close()
        finally:
            if self._dir is not None:
                if self._made is not None:
                    self._remove_own_socket(self._dir)
                os.close(self._dir)
                self._dir = None

    def _remove_own_socket(self, directory: int) -> None:
        name = self._path.name
        try:
            now = os.stat(name, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return
        if (now.st_dev, now.st_ino) == self._made:
            os.unlink(name, dir_fd=directory)
        else:
            log.warning("socket.replaced", path=str(self._path), action="left in place")

    def _admit(self, caller: Caller) -> TooManyConnections | None:
        """Whether a new connection may be served: unprivileged callers share all but the
        reserved slots, each uid at most its share; root and allowed callers may use all."""
        limits = self._limits
        privileged = caller.uid == 0 or (
            self._policy.restricted and self._policy.may_mutate(caller)
        )
        if self._connections >= limits.max_connections:
            why, limit = "the daemon's connections are all taken", limits.max_connections
        elif privileged:
            return None
        elif self._connections >= limits.max_connections - limits.reserved:
            why = "the remaining connections are reserved for root and allowed callers"
            limit = limits.max_connections - limits.reserved
        elif self._per_uid[caller.uid] >= limits.per_uid:
            why, limit = f"uid {caller.uid} holds its share of connections", limits.per_uid
        else:
            return None
        return TooManyConnections(f"{why} ({limit}); try again later", limit=limit, reason=why)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = peer_credentials(writer.get_extra_info("socket"))
        connection = Connection(writer, caller, self._limits.write_timeout_s, self._engine)
        refusal = self._admit(caller)
        if refusal is not None:
            log.warning("rpc.refused", reason=refusal.data["reason"], **caller.as_log())
            with contextlib.suppress(ConnectionError):
                writer.write(error_line(refusal.code, refusal.message, refusal.data))
            writer.close()
            return
        self._connections += 1
        self._per_uid[caller.uid] += 1
        self._open.add(connection)
        owner = id(connection)
        pushes = connection.pushes
        context = Context(
            self._engine, caller, self._policy, pushes.subscribe, owner, pushes.follow
        )
        try:
            await self._serve(reader, connection, context)
        except ConnectionError:
            pass
        finally:
            # A caller that hangs up (or half-closes after its last request, as socat does)
            # does not abort its switch: the request tasks finish, answer if they still can,
            # and log their outcome; only then is the transport closed.
            connection.closed = True
            pushes.end()
            self._engine.leases.release_owner(owner)  # its requests in flight are over
            if connection.tasks or connection.acquires:
                await asyncio.wait(connection.tasks | connection.acquires)
            pushes.end()  # in case a subscribe or a follow was still on its way
            self._engine.leases.release_owner(owner)  # in case an acquire was still on its way
            self._open.discard(connection)
            self._connections -= 1
            self._per_uid[caller.uid] -= 1
            if not self._per_uid[caller.uid]:
                del self._per_uid[caller.uid]
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, connection: Connection, context: Context
    ) -> None:
        """Read lines in chunks and answer each; bounded in bytes, time and tasks. A line
        past MAX_MESSAGE_BYTES is refused and skipped up to its newline, holding none of
        it: the connection, and the leases it holds, go on (a router's one bad request
        must not end every other request's lease)."""
        buffer = b""
        skipping = False  # inside a line that was refused: dropped up to its newline
        while True:
            if skipping:
                newline = buffer.find(b"\n")
                skipping = newline < 0
                buffer = b"" if skipping else buffer[newline + 1 :]
            start, served = 0, 0
            while not skipping and (end := buffer.find(b"\n", start)) >= 0:
                line = buffer[start : end + 1]
                start = end + 1
                if connection.writer.is_closing():
                    return  # cut off (or gone): the rest of what it sent is not served
                if len(line) > MAX_MESSAGE_BYTES:
                    await connection.send(_too_large())
                elif line.strip():
                    await self._line(line, connection, context)
                    served += 1
                    if served % LINES_PER_TURN == 0:
                        # A chunk may hold thousands of lines: let other clients in.
                        await asyncio.sleep(0)
            if not skipping:
                buffer = buffer[start:]
                if len(buffer) > MAX_MESSAGE_BYTES:
                    await connection.send(_too_large())
                    buffer, skipping = b"", True
            try:
                # A line begun must be finished in time; between lines a client may idle.
                if buffer or skipping:
                    chunk = await asyncio.wait_for(
                        reader.read(READ_CHUNK), self._limits.line_timeout_s
                    )
                else:
                    chunk = await reader.read(READ_CHUNK)
            except TimeoutError:
                log.warning(
                    "rpc.line_timeout",
                    timeout_s=self._limits.line_timeout_s,
                    **connection.caller.as_log(),
                )
                await connection.send(
                    error_line(
                        INVALID_REQUEST,
                        "Invalid Request",
                        {"error": "line_timeout", "timeout_s": self._limits.line_timeout_s},
                    )
                )
                return
            if not chunk:
                if buffer.strip() and not skipping:  # the last message may lack its newline
                    await self._line(buffer, connection, context)
                return
            buffer += chunk

    async def _line(self, line: bytes, connection: Connection, context: Context) -> None:
        text, request = parse(line)
        if text is None or not may_take_long(request):
            # Answered from memory (or refused) at once: no task, no extra loop turn.
            await self._request(text, request, context, connection)
            return
        if isinstance(request, list) and len(request) > MAX_BATCH:
            refusal = {"error": "batch_too_large", "limit": MAX_BATCH}
            await connection.send(error_line(INVALID_REQUEST, "Invalid Request", refusal))
            return
        if is_acquire(request):
            line_now = answer_now(text, request, context)
            if line_now is not None:  # granted (or refused) at once: no task
                await connection.send(line_now)
                return
            if len(connection.acquires) >= self._limits.acquires:
                refusal = {"error": "limit_reached", "limit": self._limits.acquires}
                await connection.send(
                    error_line(LimitReached.code, "too many acquires waiting", refusal, request)
                )
                return
            pool = connection.acquires
        else:
            pool = connection.tasks
            while len(pool) >= self._limits.tasks:
                # Backpressure: this connection is not read until one of its requests ends.
                await asyncio.wait(pool, return_when=asyncio.FIRST_COMPLETED)
        # Anything that may take long runs on its own, so this connection's next
        # requests are not held up behind it.
        task = asyncio.create_task(self._request(text, request, context, connection))
        for registry in (self._requests, pool):
            registry.add(task)
            task.add_done_callback(registry.discard)

    @staticmethod
    async def _request(
        text: str | None, request: Any, context: Context, connection: Connection
    ) -> None:
        line = await answer(text, request, context)
        if line is not None:
            await connection.send(line)


def _too_large() -> bytes:
    refusal = {"error": "too_large", "limit_bytes": MAX_MESSAGE_BYTES}
    return error_line(INVALID_REQUEST, "Invalid Request: line too long", refusal)


async def _answers(path: str) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
