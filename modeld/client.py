"""A small asyncio client for modeld's socket (used by modelctl and the tests)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

DEFAULT_SOCKET = Path("/run/modeld/modeld.sock")


def default_socket() -> Path:
    """MODELD_SOCKET, else the packaged default."""
    return Path(os.environ.get("MODELD_SOCKET", str(DEFAULT_SOCKET)))


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class DaemonUnreachable(Exception):
    """Nothing answers on the socket."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot reach modeld at {path}: {reason}")
        self.path = path
        self.reason = reason


class Client:
    """One connection; calls are sent one at a time and matched by id."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_socket()
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Client:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.path), limit=64 * 1024 * 1024
            )
        except FileNotFoundError:
            raise DaemonUnreachable(self.path, "no such socket") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(self.path, "connection refused (stale socket?)") from None
        except PermissionError:
            raise DaemonUnreachable(
                self.path, "permission denied (are you in the modeld group?)"
            ) from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()

    async def call(self, method: str, **params: Any) -> Any:
        """Call `method` with named params; the result, or RpcError."""
        assert self._reader is not None and self._writer is not None, "use `async with`"
        request_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params:
            message["params"] = params
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()
        while True:
            line = await self._reader.readline()
            if not line:
                raise DaemonUnreachable(self.path, "connection closed by modeld")
            response = json.loads(line)
            if response.get("id") == request_id:
                break
        if "error" in response:
            error = response["error"]
            raise RpcError(error["code"], error["message"], error.get("data"))
        return response["result"]

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Subscribe, then yield each event the daemon pushes on this connection."""
        async for event in await self.subscribe():
            yield event

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Subscribe now (events from this moment on are kept for the caller); iterate the
        result for each event the daemon pushes on this connection."""
        await self.call("subscribe")
        return self._pushed()

    async def _pushed(self) -> AsyncIterator[dict[str, Any]]:
        assert self._reader is not None
        while line := await self._reader.readline():
            message = json.loads(line)
            if message.get("method") == "event":
                yield message["params"]
        raise DaemonUnreachable(self.path, "connection closed by modeld")


async def call(method: str, path: Path | None = None, **params: Any) -> Any:
    """One call on a fresh connection."""
    async with Client(path) as client:
        return await client.call(method, **params)
