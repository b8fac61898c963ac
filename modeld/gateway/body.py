"""Request bodies, bounded by what they cost in memory.

aiohttp inflates a compressed body whole before anything can look at it, and a parse
of JSON builds Python objects many times the size of their text: a 30 KB gzip body
once cost the gateway 850 MB. Here (the server runs with aiohttp's decompression off):

- the body is read as sent, at most `max_body_bytes` of it, within `body_timeout_s`;
- gzip and deflate are inflated piece by piece, and inflating stops as soon as the
  result passes `max_body_bytes` (413): a bomb costs at most the bound, never its
  inflated size; any other Content-Encoding is 415;
- before the JSON is parsed, what its parse would build is estimated from the count
  of arrays, objects and separators (C-speed byte counts): a body whose objects would
  take more than PARSE_BUDGET_BYTES is refused (413) without being parsed;
- only the `model` is kept from the parse: a request waiting for its model holds its
  bounded bytes, not a tree of objects.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

from aiohttp import web

from modeld.core.config import MODEL_NAME
from modeld.gateway.errors import GatewayError

READ_CHUNK = 64 * 1024
# Bodies up to this size are parsed on the event loop (well under a millisecond); larger
# ones off it, one at a time, so concurrent big bodies never hold several trees at once.
PARSE_INLINE_BYTES = 256 * 1024
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


async def _raw(request: web.Request, limit: int) -> bytes:
    """The body as sent, at most `limit` bytes (413 past it)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            chunks.clear()  # not kept alive by the error's traceback
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """`data` decompressed, never holding more than `limit` + one piece of it (413 past
    `limit`; 400 when it is not what its Content-Encoding says)."""
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    pending = data
    try:
        while pending and len(out) <= limit:
            piece = inflater.decompress(pending, READ_CHUNK)
            out += piece
            pending = inflater.unconsumed_tail
            if not piece and not pending:
                break
        if len(out) <= limit:
            out += inflater.flush(READ_CHUNK)
    except zlib.error:
        out.clear()
        raise GatewayError(
            "bad_request", "the request body is not what its Content-Encoding says"
        ) from None
    if len(out) > limit:
        # Freed now: a traceback that outlives this call must not keep it.
        out.clear()
        raise _too_large(limit)
    return bytes(out)


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


class Bodies:
    """Reads and parses request bodies within their bounds; big ones one at a time."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._parsing = asyncio.Semaphore(1)

    async def read(self, request: web.Request) -> bytes:
        """The request's body, decompressed, at most `limit` bytes after decompression;
        408 when it does not arrive within `timeout_s`, 413 past the limit, 415 for an
        encoding the gateway does not take."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ENCODINGS and encoding != "identity":
            raise GatewayError(
                "unsupported_media_type", "Content-Encoding must be gzip, deflate or none"
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await _raw(request, self.limit)
        except TimeoutError:
            raise GatewayError(
                "request_timeout",
                f"the request body did not arrive within {self.timeout_s:g}s",
            ) from None
        if encoding == "identity":
            return raw
        inflated: bytes = await self._bounded(inflate, raw, ENCODINGS[encoding], self.limit)
        return inflated

    async def _bounded(self, function: Any, body: bytes, *args: Any) -> Any:
        """`function(body, *args)`: on the loop for small bodies, else off it, one at a
        time (so concurrent big bodies never hold several parses at once)."""
        if len(body) <= PARSE_INLINE_BYTES:
            return function(body, *args)
        async with self._parsing:
            return await asyncio.to_thread(function, body, *args)

    async def model(self, body: bytes) -> tuple[str, bool]:
        """The model a request body names (checked as a name), and whether it asks for a
        streamed answer; the parse is dropped."""
        named: tuple[str, bool] = await self._bounded(_model_of, body)
        return named

    async def renamed(self, body: bytes, served: str) -> bytes:
        """`body` with its `model` replaced by the name the backend serves it under."""
        result: bytes = await self._bounded(_renamed, body, served)
        return result
