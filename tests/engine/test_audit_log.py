"""The audit log: every line an operation writes names the operation, its model and
who asked, as the daemon's JSON log lines carry them."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from modeld.service.logs import configure_logging
from tests.support import EngineFactory, make_config

TWO = {"a": {"gpu_memory_gb": 50}, "b": {"gpu_memory_gb": 50}}


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """modeld's own logging (JSON lines on stderr) for the test, stderr kept here."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("info", json_output=True)
    try:
        yield buffer
    finally:
        structlog.configure(**saved)


def written(stderr: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines written since the last call."""
    lines = [json.loads(line) for line in stderr.getvalue().splitlines() if line]
    stderr.seek(0)
    stderr.truncate()
    return lines


async def test_an_operations_lines_name_it_its_model_and_its_caller(
    engines: EngineFactory, stderr: io.StringIO
) -> None:
    """A switch asked for by uid 1000: its request, its plan, the stop it makes and its
    end each carry op, model and caller; a line written after it carries none."""
    engine, _, _ = await engines(make_config(TWO, [80]))
    await engine.models.switch("a")
    written(stderr)
    await engine.models.switch("b", caller={"uid": 1000, "pid": 4242})
    engine.models.history("b")
    lines = written(stderr)
    by_event = {line["event"]: line for line in lines}
    for event in ("operation.requested", "switch.plan", "operation.done"):
        line = by_event[event]
        assert line["op"] == "switch", line
        assert line["model"] == "b", line
        assert line["caller"] == {"uid": 1000, "pid": 4242}, line
    stopping = next(
        line
        for line in lines
        if line["event"] == "model.transition" and line["to_state"] == "stopped"
    )
    assert stopping["model"] == "a" and stopping["caller"] == {"uid": 1000, "pid": 4242}
    await engine.poll_once()
    after = [line for line in written(stderr) if "caller" in line]
    assert after == []
