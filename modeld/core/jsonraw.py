"""JSON answers as bytes: results already serialized (RawJSON) are spliced in as is.

`status` with many models is tens of kilobytes, serialized once per change; each call
then costs one copy of it, not a json.dumps of the whole view. jsonrpcserver's public
`dispatch_to_serializable` gives each answer as a dict; only its `result` may be RawJSON.
"""

from __future__ import annotations

import json
from typing import Any


class RawJSON(bytes):
    """UTF-8 bytes that are already JSON: the response serializer inserts them as is."""


_SUCCESS_HEAD = b'{"jsonrpc":"2.0","result":'
_ID = b',"id":'


def _one(response: dict[str, Any]) -> bytes:
    result = response.get("result")
    if isinstance(result, RawJSON):
        return b"".join((_SUCCESS_HEAD, result, _ID, json.dumps(response["id"]).encode(), b"}"))
    return json.dumps(response, separators=(",", ":")).encode()


def response_line(dispatched: dict[str, Any] | list[dict[str, Any]] | None) -> bytes | None:
    """What dispatch_to_serializable gave (one answer, a batch's, or None for
    notifications) as one NDJSON line."""
    if dispatched is None:
        return None
    if isinstance(dispatched, list):
        return b"[" + b",".join(_one(r) for r in dispatched) + b"]\n"
    return _one(dispatched) + b"\n"
