"""docs/api.schema.json, generated from the method table (`modeld api-schema`)."""

from __future__ import annotations

import json

from pydantic import TypeAdapter

from modeld.daemon.methods import API
from modeld.wire.events import EVENT


def api_schema() -> dict[str, object]:
    """docs/api.schema.json: each method's params and result, and the events, as JSON
    Schema."""
    methods: dict[str, object] = {}
    for method in API:
        methods[method.name] = {
            "description": method.doc,
            "mutates": method.mutates,
            "inline": method.inline,
            "params": method.params.model_json_schema(),
            "result": TypeAdapter(method.result).json_schema(),
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "modeld JSON-RPC API",
        "description": "NDJSON JSON-RPC 2.0 over the daemon's Unix socket; see docs/api.md.",
        "methods": methods,
        # What `subscribe` pushes, as `event` notifications (and GET /events sends).
        "events": EVENT.json_schema(),
    }


def api_schema_text() -> str:
    """docs/api.schema.json's text."""
    return json.dumps(api_schema(), indent=2, sort_keys=True) + "\n"
