"""Token probes: a backend is trusted when it answers a token, not when /health says 200
(a hung engine keeps answering /health). Probed right after a load or a wake, before
the model is announced running, when it has been idle for probe_interval_s, and at once
when its requests have not moved for stall_after_s; a probe
never counts as activity (model.py discounts it) and takes no lease. docs/probes.md.
"""

from __future__ import annotations

import asyncio

import structlog

from modeld.adapters.vllm import VllmClient
from modeld.core.backend_keys import read_backend_key
from modeld.core.errors import ConfigError, ProbeFailed
from modeld.core.states import State
from modeld.engine.model import Model

log = structlog.get_logger("modeld.engine.probes")


async def probe(vllm: VllmClient, model: Model) -> ProbeFailed | None:
    """Ask the model for its probe's answer; the failure, in words an operator reads
    ("engine not answering: no token in 5 s though /health answers 200"), or None. A
    model probed by /health alone, or an adapter (its base answers for it), passes."""
    config = model.config
    if config.probe == "health" or config.base:
        return None
    try:
        key = await asyncio.to_thread(read_backend_key, config)
    except ConfigError:
        key = None  # its start said so already; the probe then says what vLLM answers
    try:
        answer = await vllm.probe(config, config.probe_timeout_s, key)
    except ProbeFailed as exc:
        why = f"engine not answering: {exc.message} though /health answers 200"
        log.warning("probe.failed", model=model.name, error=exc.message)
        return ProbeFailed(f"{model.name}: {why}", model=model.name, reason=why)
    model.probed(answer)
    return None


def probe_due(model: Model, now: float) -> bool:
    """Whether a running model is due a probe: idle (no request, no probe) for its
    probe_interval_s, or with requests in flight that have not moved (no token, none
    finished) for its stall_after_s."""
    config = model.config
    if config.probe == "health" or config.base or model.state is not State.RUNNING:
        return False
    usage = model.usage
    started = model.running_since or 0.0
    interval = config.probe_interval_s
    quiet_since = max(usage.last_active, usage.probed_at, started)
    if interval is not None and now - quiet_since >= interval:
        return True
    stall = config.stall_after_s
    busy = usage.activity is not None and usage.activity.in_flight > 0
    stuck_since = max(usage.progress_at, usage.probed_at, started)
    return stall is not None and busy and now - stuck_since >= stall
