"""Device health through NVML: critical Xid events, waited for on a thread of their own
(nvmlEventSetWait blocks), and the ECC and retired-page state read with each reading.
Any of these a device or driver does not support reads as unknown (None), never as an
error."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any

import pynvml
import structlog

from modeld.core.gpu_health import DeviceSignals

log = structlog.get_logger("modeld.adapters.gpu.nvml")

# How long one wait for an event blocks its thread (the watcher checks for its end
# between waits).
WAIT_MS = 500
# Xid events kept between two readings (a storm of them says no more than the first).
KEPT_EVENTS = 256


class XidWatcher:
    """A thread that waits for critical Xid events on every device that reports them,
    and keeps them until the next reading takes them."""

    def __init__(self) -> None:
        self._events: deque[tuple[int, int]] = deque(maxlen=KEPT_EVENTS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._set: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register every device for critical Xid events and start waiting (devices that
        do not support them are left out, said in the log)."""
        try:
            self._set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            log.warning("gpu.xid_events_unavailable", reason=str(exc))
            return
        watched = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, self._set
                )
                watched += 1
            except pynvml.NVMLError as exc:
                log.warning("gpu.xid_events_unsupported", device=index, reason=str(exc))
        if not watched:
            return
        self._thread = threading.Thread(target=self._wait, name="nvml-xid", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        while not self._stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait(self._set, WAIT_MS)
            except pynvml.NVMLError as exc:
                if getattr(exc, "value", None) == pynvml.NVML_ERROR_TIMEOUT:
                    continue
                log.warning("gpu.xid_wait_failed", reason=str(exc))
                self._stop.wait(WAIT_MS / 1000)
                continue
            try:
                index = pynvml.nvmlDeviceGetIndex(data.device)
            except pynvml.NVMLError:
                continue
            with self._lock:
                self._events.append((int(index), int(data.eventData)))

    def take(self, index: int) -> tuple[int, ...]:
        """The Xids `index` reported since the last take."""
        with self._lock:
            mine = tuple(xid for device, xid in self._events if device == index)
            others = [(d, x) for d, x in self._events if d != index]
            self._events.clear()
            self._events.extend(others)
        return mine

    def stop(self) -> None:
        """End the thread (within one wait) and free the event set."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * WAIT_MS / 1000)
        if self._set is not None:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(self._set)
            self._set = None


def signals(handle: Any, xids: tuple[int, ...]) -> DeviceSignals:
    """A device's health as NVML reports it now, with the Xids seen since the last read."""
    ecc: int | None = None
    with contextlib.suppress(pynvml.NVMLError):
        ecc = int(
            pynvml.nvmlDeviceGetTotalEccErrors(
                handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
            )
        )
    pending: bool | None = None
    failed: bool | None = None
    with contextlib.suppress(pynvml.NVMLError):
        pending = bool(pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
    with contextlib.suppress(pynvml.NVMLError):
        # Ampere and later remap rows instead of retiring pages.
        _, _, remap_pending, remap_failure = pynvml.nvmlDeviceGetRemappedRows(handle)
        pending = bool(pending) or bool(remap_pending)
        failed = bool(remap_failure)
    return DeviceSignals(xids, ecc, pending, failed)
