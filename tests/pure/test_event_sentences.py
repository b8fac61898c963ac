"""`modelctl watch` says every event in a sentence: no raw JSON, no Python dicts."""

from __future__ import annotations

import time
from typing import Any, get_args

from rich.console import Console

from modeld.cli.sentences import render_event
from modeld.wire.events import Event, OtherEvent, read_event

# One event of each kind, with the fields its publisher sends.
SAMPLES: dict[str, dict[str, Any]] = {
    "state": {
        "model": "chat",
        "from_state": "loading",
        "to_state": "failed",
        "reason": "load failed",
        "failure": "chat: exited with code 3",
    },
    "switch.plan": {
        "model": "chat",
        "stop": ["coder"],
        "park": ["big"],
        "memory_info": {"required_gb": 14.0, "available_before_gb": 4.0, "freed_gb": 0},
        "policy": "cost_aware",
    },
    "switch.stopped": {"model": "chat", "stopped": "coder"},
    "switch.parked": {"model": "chat", "parked": "big"},
    "switch.room_ready": {"model": "chat", "free_gb": {"0": 14.0}},
    "switch.waking": {"model": "chat"},
    "park.failed": {"model": "big", "error": "sleep refused"},
    "wake.failed": {"model": "big", "error": "wake refused", "fallback": "cold start"},
    "idle.unloaded": {"model": "chat", "action": "parked"},
    "drain": {"model": "coder", "leases": 2},
    "config.reloaded": {"added": ["new"], "removed": []},
    "gpu.memory": {"devices": [{"index": 0, "used_gb": 9.2, "free_gb": 70.8}]},
    "gpu.health": {
        "device": 0,
        "from_health": "ok",
        "to_health": "unusable",
        "reasons": ["Xid 79: GPU has fallen off the bus"],
        "models": ["chat"],
    },
    "gateway.connected": {"socket": "/run/modeld/modeld.sock"},
    "gateway.disconnected": {"reason": "connection closed"},
}


def published_kinds() -> set[str]:
    """Every event kind there is (the wire's union of event types)."""
    members = get_args(get_args(Event)[0])
    return {member.model_fields["type"].default for member in members}


def said(event: dict[str, Any]) -> str:
    """What `modelctl watch` prints for the event, as the client reads it."""
    console = Console(width=200, record=True, force_terminal=False)
    render_event(console, read_event({"seq": 1, "time": time.time(), **event}), as_json=False)
    return console.export_text()


def test_every_published_event_has_a_sentence() -> None:
    """A new kind of event cannot ship without its sentence (mypy: the match in
    event_sentence is exhaustive) and a sample here, read as its own type."""
    kinds = published_kinds()
    assert "state" in kinds and "switch.plan" in kinds  # the union is found
    assert kinds <= set(SAMPLES), kinds - set(SAMPLES)
    for kind, fields in SAMPLES.items():
        assert not isinstance(read_event({"type": kind, **fields}), OtherEvent), kind


def test_each_event_reads_as_a_sentence_naming_its_model() -> None:
    """No braces, no quotes of a Python dict; the model and the figures in words."""
    for kind, fields in SAMPLES.items():
        text = said({"type": kind, **fields})
        assert "{" not in text and "'" not in text, (kind, text)
        if "model" in fields:
            assert fields["model"] in text, (kind, text)
    assert "GPU 0 has 14.0 GB free" in said(
        {"type": "switch.room_ready", **SAMPLES["switch.room_ready"]}
    )
    memory = said({"type": "gpu.memory", **SAMPLES["gpu.memory"]})
    assert "GPU memory now: GPU 0 9.2 GB used, 70.8 GB free" in memory
    plan = said({"type": "switch.plan", **SAMPLES["switch.plan"]})
    assert "will stop coder and park big (needs 14.0 GB, 4.0 GB free before)" in plan


def test_an_unknown_or_malformed_event_is_still_words() -> None:
    """An event from a newer daemon, or one missing a field, prints its fields plainly."""
    text = said({"type": "future.thing", "model": "chat", "count": 3})
    assert text.strip().endswith("future.thing: model chat, count 3")
    broken = said({"type": "switch.plan"})
    assert "switch.plan" in broken and "{" not in broken
