"""Device health: a pure decision from what the driver reports (critical Xid events,
uncorrected ECC errors, retired pages or remapped rows) to `ok`, `degraded` or
`unusable`, with the reasons. Health only worsens on its own: an operator who has
checked or reset the device clears it (`modelctl gpu reset-health N`). docs/gpu-health.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class DeviceState(StrEnum):
    """How far a device is trusted: loads go to `ok` and `degraded` ones, never to an
    `unusable` one."""

    OK = "ok"
    DEGRADED = "degraded"
    UNUSABLE = "unusable"


# Xids that mean the device itself is broken until it is reset or replaced (NVIDIA's Xid
# catalogue): double-bit ECC, a failed page retirement or row remap, fallen off the bus,
# an uncontained ECC error, the GSP not answering, an unrecovered ECC error.
UNUSABLE_XIDS = {
    48: "double-bit ECC error",
    64: "ECC page retirement or row remapping failed",
    79: "GPU has fallen off the bus",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
# Xids worth saying but not a broken device on their own (a contained ECC error ends the
# process that hit it; a retired page waits for a reset; NVLink or a high single-bit rate).
DEGRADED_XIDS = {
    63: "ECC page retirement or row remapping recorded (a reset applies it)",
    74: "NVLink error",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
}
# Reasons kept per device (the first ones say what started it).
MAX_REASONS = 8


@dataclass(frozen=True)
class DeviceSignals:
    """What one reading of a device says about its health (None: the driver cannot
    say)."""

    xids: tuple[int, ...] = ()
    # Uncorrected ECC errors since the driver loaded (volatile).
    ecc_uncorrected: int | None = None
    # Retired pages, or remapped rows, waiting for a reset to apply.
    retirement_pending: bool | None = None
    # A row remap that failed: the memory is bad and cannot be remapped.
    remap_failed: bool | None = None


@dataclass(frozen=True)
class DeviceHealth:
    """A device's health, why, and the ECC count it was last cleared at."""

    state: DeviceState = DeviceState.OK
    reasons: tuple[str, ...] = ()
    ecc_cleared_at: int = 0


def assess(health: DeviceHealth, signals: DeviceSignals) -> DeviceHealth:
    """The health after one reading: each signal may move it down (never up), adding
    its reason."""
    found: list[tuple[DeviceState, str]] = []
    for xid in signals.xids:
        if xid in UNUSABLE_XIDS:
            found.append((DeviceState.UNUSABLE, f"Xid {xid}: {UNUSABLE_XIDS[xid]}"))
        else:
            what = DEGRADED_XIDS.get(xid, "a critical error the driver reported")
            found.append((DeviceState.DEGRADED, f"Xid {xid}: {what}"))
    ecc = signals.ecc_uncorrected
    if ecc is not None and ecc > health.ecc_cleared_at:
        found.append((DeviceState.UNUSABLE, f"{ecc} uncorrected ECC errors"))
        health = replace(health, ecc_cleared_at=ecc)
    if signals.remap_failed:
        found.append((DeviceState.UNUSABLE, "a row remap failed: its memory cannot be repaired"))
    if signals.retirement_pending:
        found.append((DeviceState.DEGRADED, "retired pages or remapped rows wait for a reset"))
    for state, reason in found:
        worse = _rank(state) > _rank(health.state)
        reasons = health.reasons if reason in health.reasons else (*health.reasons, reason)
        health = replace(
            health, state=state if worse else health.state, reasons=reasons[:MAX_REASONS]
        )
    return health


def cleared(health: DeviceHealth, signals: DeviceSignals) -> DeviceHealth:
    """An operator's reset: `ok`, with the ECC count as it stands now as the new
    baseline (errors from before the check are not counted again)."""
    return DeviceHealth(ecc_cleared_at=signals.ecc_uncorrected or health.ecc_cleared_at)


def _rank(state: DeviceState) -> int:
    return [DeviceState.OK, DeviceState.DEGRADED, DeviceState.UNUSABLE].index(state)
