"""One way to write a duration and a size, wherever modeld says one (plan, status,
modelctl, events; the page's app.js follows the same rule): seconds with one decimal
below ten and whole above, `~` before an estimate; gigabytes with one decimal."""

from __future__ import annotations


def seconds(value: float) -> str:
    """`0.5 s`, `12 s`."""
    return f"{value:.1f} s" if abs(value) < 10 else f"{value:.0f} s"


def about(value: float) -> str:
    """An estimate: `~0.5 s`, `~12 s`."""
    return "~" + seconds(value)


def gigabytes(value: float) -> str:
    """`14.0 GB`."""
    return f"{value:.1f} GB"
