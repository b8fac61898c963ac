"""What backends printed or answered (their command lines, users' prompts) is for the
host's operators only: one redaction, for the daemon's read-only peers and the gateway's
non-admin keys."""

from __future__ import annotations

from typing import Any

# The fields that carry backends' output: a failed load's last lines, and what a backend
# answered a sleep-mode call.
BACKEND_OUTPUT = frozenset({"last_lines", "answer"})


def without_backend_output(value: Any) -> Any:
    """`value` with backends' output emptied at any depth (the fields stay, empty, so a
    client reading them sees the same shape)."""
    if isinstance(value, dict):
        return {
            key: ([] if isinstance(item, list) else "")
            if key in BACKEND_OUTPUT
            else without_backend_output(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [without_backend_output(item) for item in value]
    return value
