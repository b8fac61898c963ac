"""The JSON-RPC API as one declarative table: each method's name, params model,
result model, whether it changes models (only callers allowed to mutate may call it),
whether it is answered inline from memory, and the engine call behind it. rpc.py
dispatches through jsonrpcserver from this table; `api_schema` turns it into
docs/api.schema.json; dispatch.py calls them, and turns results into JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modeld import __version__
from modeld.core.jsonraw import RawJSON
from modeld.daemon.dispatch import Context, Method
from modeld.daemon.params import (
    AcquireParams,
    DeviceParams,
    HistoryParams,
    LeaseUpdateParams,
    LoadParams,
    LogsParams,
    NoParams,
    PlanParams,
    ReleaseParams,
    StopParams,
    SwitchParams,
)
from modeld.wire.results import (
    Following,
    HistoryResult,
    LeaseResult,
    LeaseUpdated,
    LogsResult,
    PlanResult,
    Pong,
    ReleaseResult,
    ReloadResult,
    StopResult,
    Subscribed,
    SwitchResult,
)
from modeld.wire.status import GpuStatus, ModelInfo, Status


def _ping(ctx: Context, _: NoParams) -> Pong:
    return Pong(pong=True, version=__version__)


def _status(ctx: Context, _: NoParams) -> RawJSON:
    return ctx.engine.view.status_json(redacted=not ctx.trusted)


def _gpu(ctx: Context, _: NoParams) -> GpuStatus:
    return ctx.engine.view.gpu()


async def _gpu_reset_health(ctx: Context, p: DeviceParams) -> GpuStatus:
    await ctx.engine.reset_gpu_health(p.device, caller=ctx.caller.as_log())
    return ctx.engine.view.gpu()


def _models(ctx: Context, _: NoParams) -> list[ModelInfo]:
    return ctx.engine.view.models()


async def _switch(ctx: Context, p: SwitchParams) -> SwitchResult:
    return await ctx.engine.models.switch(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log(), force=p.force
    )


def _history(ctx: Context, p: HistoryParams) -> HistoryResult:
    return HistoryResult(entries=ctx.engine.models.history(p.model, p.limit))


async def _plan(ctx: Context, p: PlanParams) -> PlanResult:
    return await ctx.engine.models.plan(p.model, force=p.force)


async def _start(ctx: Context, p: LoadParams) -> SwitchResult:
    return await ctx.engine.models.start(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _stop(ctx: Context, p: StopParams) -> StopResult:
    return await ctx.engine.models.stop(p.model, caller=ctx.caller.as_log(), force=p.force)


async def _restart(ctx: Context, p: LoadParams) -> SwitchResult:
    return await ctx.engine.models.restart(
        p.model, wait=p.wait, timeout=p.timeout, caller=ctx.caller.as_log()
    )


async def _acquire(ctx: Context, p: AcquireParams) -> LeaseResult:
    return await ctx.engine.leases.acquire(
        p.model,
        owner=ctx.owner,
        timeout=p.timeout_s,
        caller=ctx.caller.as_log(),
        load=p.load,
        request_bytes=p.request_bytes,
        standing=p.standing,
    )


def _acquire_now(ctx: Context, p: AcquireParams) -> LeaseResult | None:
    return ctx.engine.leases.acquire_now(
        p.model,
        owner=ctx.owner,
        caller=ctx.caller.as_log(),
        request_bytes=p.request_bytes,
        standing=p.standing,
    )


def _lease_update(ctx: Context, p: LeaseUpdateParams) -> LeaseUpdated:
    return ctx.engine.leases.update(
        p.lease, owner=ctx.owner, in_flight=p.in_flight, served=p.served, cut_bytes=p.cut_bytes
    )


def _release(ctx: Context, p: ReleaseParams) -> ReleaseResult:
    return ctx.engine.leases.release(p.lease, owner=ctx.owner, broken=p.broken)


def _subscribe(ctx: Context, _: NoParams) -> Subscribed:
    # One subscription per connection: subscribing again changes nothing.
    return Subscribed(subscribed=True, already=not ctx.attach())


async def _logs(ctx: Context, p: LogsParams) -> LogsResult | Following:
    if p.follow:
        # The last lines come first as notifications, then each new one: no gap between.
        already = not ctx.follow(p.model, ctx.engine.models.follow_logs(p.model, p.lines))
        return Following(model=p.model, following=True, already=already)
    return await ctx.engine.models.logs(p.model, p.lines)


async def _reload(ctx: Context, _: NoParams) -> ReloadResult:
    return await ctx.engine.reload(caller=ctx.caller.as_log())


API: tuple[Method[Any], ...] = (
    Method("ping", NoParams, Pong, _ping, "Is the daemon there, and which version.", inline=True),
    Method(
        "status",
        NoParams,
        Status,
        _status,
        "Every model, the GPU, parking, runtimes.",
        inline=True,
    ),
    Method("gpu", NoParams, GpuStatus, _gpu, "The last GPU reading.", inline=True),
    Method(
        "gpu_reset_health",
        DeviceParams,
        GpuStatus,
        _gpu_reset_health,
        "Clear a device's health (ok again) after a check or a reset of it.",
        mutates=True,
    ),
    Method("models", NoParams, list[ModelInfo], _models, "The configured models.", inline=True),
    Method(
        "switch",
        SwitchParams,
        SwitchResult,
        _switch,
        "Make a model the one that answers, stopping or parking no more than it must.",
        mutates=True,
    ),
    Method(
        "history",
        HistoryParams,
        HistoryResult,
        _history,
        "What was done to models and why: state changes with reasons, switches' plans.",
        inline=True,
    ),
    Method(
        "plan",
        PlanParams,
        PlanResult,
        _plan,
        "What a switch to a model would stop, park and start now, and why; changes nothing.",
    ),
    Method(
        "start",
        LoadParams,
        SwitchResult,
        _start,
        "Start a model only if it fits without stopping anything.",
        mutates=True,
    ),
    Method(
        "stop",
        StopParams,
        StopResult,
        _stop,
        "Stop a model once its requests in flight have ended.",
        mutates=True,
    ),
    Method(
        "restart",
        LoadParams,
        SwitchResult,
        _restart,
        "Stop a model and start it again.",
        mutates=True,
    ),
    Method(
        "acquire",
        AcquireParams,
        LeaseResult,
        _acquire,
        "A lease on a model once it runs and answers.",
        mutates=True,
        now=_acquire_now,
    ),
    Method(
        "release",
        ReleaseParams,
        ReleaseResult,
        _release,
        "End a lease this connection holds.",
        inline=True,
    ),
    Method(
        "lease_update",
        LeaseUpdateParams,
        LeaseUpdated,
        _lease_update,
        "A standing lease's requests in flight, served and cut off (often a notification).",
        mutates=True,
        inline=True,
    ),
    Method(
        "subscribe",
        NoParams,
        Subscribed,
        _subscribe,
        "Events (state changes, switch progress) as notifications.",
    ),
    Method(
        "logs",
        LogsParams,
        LogsResult | Following,
        _logs,
        "A backend's last lines, or follow them.",
        mutates=True,
    ),
    Method(
        "reload",
        NoParams,
        ReloadResult,
        _reload,
        "Re-read the config file and apply it.",
        mutates=True,
    ),
)
BY_NAME: Mapping[str, Method[Any]] = {method.name: method for method in API}
