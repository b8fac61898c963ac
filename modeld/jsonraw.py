"""JSON responses as bytes: results already serialized (RawJSON) are spliced in as is.

`status` with many models is tens of kilobytes, serialized once per change; each call
then costs one copy of it, not a json.dumps, a str-to-bytes encode and a newline append.
"""

from __future__ import annotations

import json
from typing import Any

from jsonrpcserver.response import to_serializable_one
from oslash.either import Either, Right


class RawJSON(bytes):
    """UTF-8 bytes that are already JSON: the response serializer inserts them as is."""


_SUCCESS_HEAD = b'{"jsonrpc":"2.0","result":'
_ID = b',"id":'


def response_bytes(response: Either, end: bytes = b"") -> bytes:
    """One jsonrpcserver Response as JSON bytes, then `end` (jsonrpcserver's post_process;
    a whole NDJSON line with end=b"\\n")."""
    if isinstance(response, Right):
        success = response._value
        if isinstance(success.result, RawJSON):
            return b"".join((_SUCCESS_HEAD, success.result, _ID, _id(success.id), b"}", end))
    return json.dumps(to_serializable_one(response), separators=(",", ":")).encode() + end


def response_line(dispatched: bytes | list[bytes] | None) -> bytes | None:
    """What dispatch_to_response gave (one, a batch, or None for notifications) as one
    NDJSON line."""
    if dispatched is None:
        return None
    if isinstance(dispatched, list):
        return b"[" + b",".join(dispatched) + b"]\n"
    return dispatched + b"\n"


def _id(value: Any) -> bytes:
    return json.dumps(value).encode()
