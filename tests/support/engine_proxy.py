"""A Unix-socket proxy in front of the real Docker engine, that a test can cut.

Cut, it accepts and at once drops every connection (and counts them), as an engine
that is down or restarting looks to a client; restored, it forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

ENGINE = Path("/var/run/docker.sock")


class EngineProxy:
    """Forwards a socket to the Docker engine until cut."""

    def __init__(self, path: Path, engine: Path = ENGINE) -> None:
        self.path = path
        self.engine = engine
        self.cut_off = False
        self.refused = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The DOCKER_HOST-style URL of the proxy."""
        return f"unix://{self.path}"

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path))

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        self.cut()
        if self._server is not None:
            self._server.close()

    def cut(self) -> None:
        """From now on drop connections; drop the open ones too."""
        self.cut_off = True
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        """Forward again."""
        self.cut_off = False

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.refused += 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.engine))
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
