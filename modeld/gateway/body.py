"""Request bodies, bounded by what they cost in memory.

aiohttp inflates a compressed body whole before anything can look at it, and a parse
of JSON builds Python objects many times the size of their text: a 30 KB gzip body
once cost the gateway 850 MB. Here (the server runs with aiohttp's decompression off):

- the body is read as sent, at most `max_body_bytes` of it, within `body_timeout_s`,
  each piece counted as it arrives by the caller (what waiting requests hold is
  bounded: gateway/shares.py);
- gzip and deflate are inflated piece by piece, and inflating stops as soon as the
  result passes `max_body_bytes` (413): a bomb costs at most the bound, never its
  inflated size; any other Content-Encoding is 415. The first PARSE_INLINE_BYTES of the
  result are inflated on the event loop, the rest off it, one body at a time: the
  choice goes by the inflated size, not the size sent;
- before the JSON is parsed, what its parse would build is estimated from the count
  of arrays, objects and separators (C-speed byte counts): a body whose objects would
  take more than PARSE_BUDGET_BYTES is refused (413) without being parsed;
- only the `model` is kept from the parse, and only the body as sent is kept while the
  request waits: a compressed body is inflated again on its way to the backend, piece
  by piece, so a waiting request never holds its inflated size.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from modeld.core.config import MODEL_NAME
from modeld.gateway.errors import GatewayError

READ_CHUNK = 64 * 1024
# Bodies up to this size are parsed on the event loop (well under a millisecond); larger
# ones off it, one at a time, so concurrent big bodies never hold several trees at once.
PARSE_INLINE_BYTES = 256 * 1024
# A compressed body is inflated on the loop while its result stays within this (one
# piece: most requests); a larger one off it, one body at a time.
INFLATE_INLINE_BYTES = 64 * 1024
# What one parse may build: about 64 bytes per array, object or element (a list slot,
# a small object), checked before parsing.
PARSE_BUDGET_BYTES = 256 * 1024 * 1024
BYTES_PER_VALUE = 64
# A model name is what a configured name may be (config.MODEL_NAME), so that a name that
# cannot be configured is refused before any lookup.
MAX_MODEL_CHARS = 128
# Inflaters by Content-Encoding (47: zlib or gzip header, detected).
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 47}


def _too_large(limit: int, what: str = "the request body") -> GatewayError:
    return GatewayError(
        "too_large",
        f"{what} is larger than {limit} bytes (gateway.max_body_bytes, counted after "
        "decompression)",
        limit=limit,
    )


async def _raw(request: web.Request, limit: int, hold: Callable[[int], None]) -> bytes:
    """The body as sent, at most `limit` bytes (413 past it), each piece passed to
    `hold` before it is kept (which refuses what the caller may not hold)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            chunks.clear()  # not kept alive by the error's traceback
            raise _too_large(limit)
        hold(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


class Inflation:
    """One body's inflation, resumable: never holding more than `limit` + one piece of
    its result (413 past `limit`; 400 when it is not what its Content-Encoding says)."""

    def __init__(self, data: bytes, wbits: int, limit: int) -> None:
        self._inflater = zlib.decompressobj(wbits)
        self._pending = data
        self._limit = limit
        # Pieces, joined once at the end: a growing buffer would be copied as it grows.
        self._out: list[bytes] = []
        self.size = 0
        self.done = False

    def run(self, until: int | None = None) -> bool:
        """Inflate until the result passes `until` bytes (None: to the end); whether the
        end was reached."""
        try:
            while not self.done and (until is None or self.size <= until):
                piece = self.piece()
                if piece is None:
                    self.done = True
                else:
                    self._out.append(piece)
                    self.size += len(piece)
                if self.size > self._limit:
                    self._out.clear()  # not kept alive by the error's traceback
                    raise _too_large(self._limit)
        except zlib.error:
            self._out.clear()
            raise GatewayError(
                "bad_request", "the request body is not what its Content-Encoding says"
            ) from None
        return self.done

    def piece(self) -> bytes | None:
        """The next piece of the result, not kept; None at the end."""
        if self._pending:
            piece = self._inflater.decompress(self._pending, READ_CHUNK)
            self._pending = self._inflater.unconsumed_tail
            if piece or self._pending:
                return piece
        tail = self._inflater.flush(READ_CHUNK)
        return tail or None

    def result(self) -> bytes:
        """The whole inflated body, once (run to the end first)."""
        assert self.done, "run() to the end first"
        whole = b"".join(self._out)
        self._out.clear()
        return whole


async def inflated_pieces(data: bytes, wbits: int, limit: int) -> AsyncIterator[bytes]:
    """`data` decompressed, piece by piece as it is sent on (one piece in memory at a
    time, on the event loop: each piece is 64 KiB of work, and the loop takes a turn
    after each, since a write the socket takes at once does not)."""
    inflation = Inflation(data, wbits, limit)
    while (piece := inflation.piece()) is not None:
        yield piece
        await asyncio.sleep(0)


def parse_cost(body: bytes) -> int:
    """About how many bytes the objects of `body`'s parse would take (an upper bound for
    arrays, objects and their elements; strings count as their length)."""
    values = body.count(b"[") + body.count(b"{") + body.count(b",") + body.count(b":")
    return values * BYTES_PER_VALUE + len(body)


def check_model_name(model: object) -> str:
    """`model` as a name a configuration could hold; 400 otherwise (a name never becomes
    a label, a log line or a daemon call before it passes)."""
    if not isinstance(model, str) or not model:
        raise GatewayError("bad_request", "the request body must name its `model` (a string)")
    if len(model) > MAX_MODEL_CHARS or not MODEL_NAME.match(model):
        raise GatewayError(
            "bad_request",
            f"`model` must be at most {MAX_MODEL_CHARS} letters, digits and ._:/@+- "
            "(no configured model has another name)",
        )
    return model


def _payload(body: bytes) -> dict[str, Any]:
    if (cost := parse_cost(body)) > PARSE_BUDGET_BYTES:
        raise GatewayError(
            "too_large",
            "the request body holds too many values to parse (about "
            f"{cost // 2**20} MiB of objects; at most "
            f"{PARSE_BUDGET_BYTES // 2**20} MiB)",
        )
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise GatewayError("bad_request", "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise GatewayError("bad_request", "the request body must be a JSON object")
    return payload


def _model_of(body: bytes) -> tuple[str, bool]:
    payload = _payload(body)
    return check_model_name(payload.get("model")), payload.get("stream") is True


def _renamed(body: bytes, served: str) -> bytes:
    return json.dumps({**_payload(body), "model": served}).encode()


@dataclass(frozen=True)
class Body:
    """A request body as it was sent, and how to inflate it (None: it is not compressed)."""

    sent: bytes
    wbits: int | None


def _to_the_end(inflation: Inflation, then: Callable[[bytes], Any]) -> Any:
    """`then(the body inflated to its end)`, off the loop."""
    inflation.run()
    return then(inflation.result())


class Bodies:
    """Reads and parses request bodies within their bounds; big ones one at a time."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._parsing = asyncio.Semaphore(1)

    async def read(self, request: web.Request, hold: Callable[[int], None]) -> Body:
        """The request's body as sent, each piece passed to `hold` as it arrives; 408
        when it does not arrive within `timeout_s`, 413 past the limit, 415 for an
        encoding the gateway does not take."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ENCODINGS and encoding != "identity":
            raise GatewayError(
                "unsupported_media_type", "Content-Encoding must be gzip, deflate or none"
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                sent = await _raw(request, self.limit, hold)
        except TimeoutError:
            raise GatewayError(
                "request_timeout",
                f"the request body did not arrive within {self.timeout_s:g}s",
            ) from None
        return Body(sent, ENCODINGS.get(encoding))

    async def _plain(self, body: Body, then: Callable[[bytes], Any]) -> Any:
        """`then(the body inflated)`: on the loop while the inflated body is small, else
        off it, one body at a time (so concurrent big bodies never hold several results
        or parses at once). The choice goes by the inflated size."""
        if body.wbits is None:
            if len(body.sent) <= PARSE_INLINE_BYTES:
                return then(body.sent)
            async with self._parsing:
                return await asyncio.to_thread(then, body.sent)
        inflation = Inflation(body.sent, body.wbits, self.limit)
        if inflation.run(INFLATE_INLINE_BYTES):
            return then(inflation.result())
        async with self._parsing:
            return await asyncio.to_thread(_to_the_end, inflation, then)

    async def model(self, body: Body) -> tuple[str, bool]:
        """The model a request body names (checked as a name), and whether it asks for a
        streamed answer; the parse, and the inflated body, are dropped."""
        named: tuple[str, bool] = await self._plain(body, _model_of)
        return named

    async def parsed(self, body: Body) -> dict[str, Any]:
        """The body as a JSON object (400 when it is not one)."""
        payload: dict[str, Any] = await self._plain(body, _payload)
        return payload

    async def upstream(self, body: Body, served: str | None) -> bytes | AsyncIterator[bytes]:
        """What to send the backend: the body with its `model` replaced by `served`, or
        (None) as it is: a compressed one inflated piece by piece as it is sent."""
        if served is not None:
            renamed: bytes = await self._plain(body, lambda plain: _renamed(plain, served))
            return renamed
        if body.wbits is None:
            return body.sent
        return inflated_pieces(body.sent, body.wbits, self.limit)
