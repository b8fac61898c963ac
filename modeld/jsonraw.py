"""JSON text already serialized, spliced into a JSON-RPC response without re-encoding."""

from __future__ import annotations

import json
from typing import Any


class RawJSON(str):
    """A string that is already JSON: the response serializer inserts it as is."""


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, RawJSON) else value


def serialize_response(response: Any) -> str:
    """jsonrpcserver's serializer: json.dumps, but a RawJSON result is spliced in as is."""
    if isinstance(response, dict) and isinstance(response.get("result"), RawJSON):
        raw, request_id = response["result"], json.dumps(response.get("id"))
        return f'{{"jsonrpc": "2.0", "result": {raw}, "id": {request_id}}}'
    if isinstance(response, list):
        # A batch is rare: decode any raw results and encode the whole list.
        response = [
            {**item, "result": _decoded(item["result"])} if "result" in item else item
            for item in response
        ]
    return json.dumps(response)
