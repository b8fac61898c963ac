"""Leases: a model serving requests is never evicted from under them; a switch that
needs it drains it (or is refused with models_busy, having stopped nothing); acquires
coalesce into one load; a connection's leases end with it. Ordered by events."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.client import Client, RpcError
from modeld.core.config import Config
from modeld.core.errors import LoadFailed, ModelsBusy, WouldLoad
from modeld.core.states import State
from modeld.daemon.server import Limits
from modeld.engine.engine import Engine
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.wire.results import LeaseResult, NotLoaded
from tests.support import (
    EngineFactory,
    ServeFactory,
    eventually,
    make_config,
    next_of,
    start_over,
    state_of,
    wait_for_state,
)

TWO = {"a": {"gpu_memory_gb": 50}, "b": {"gpu_memory_gb": 50}}


async def test_a_leased_model_survives_a_switch_until_its_release(
    engines: EngineFactory,
) -> None:
    """A switch that needs a leased model's memory drains it: the model keeps running,
    new acquires for it wait, and only after the release is it stopped for the switch;
    the acquire that waited is served after, with its own turn."""
    engine, _, _ = await engines(make_config(TWO, [80]))
    events = engine.events.subscribe()
    held = await engine.leases.acquire("a", owner=1)
    switching = asyncio.create_task(engine.models.switch("b"))
    await next_of(events, "drain", model="a")
    assert state_of(engine, "a") is State.RUNNING
    latecomer = asyncio.create_task(engine.leases.acquire("a", owner=2))
    assert engine.view.status().models["a"].leases == 1
    engine.leases.release(held.lease, owner=1)
    result = await switching
    assert result.unloaded_models == ["a"]
    assert result.state == "running"
    granted = await latecomer  # its turn: a comes back once b is up
    assert granted.model == "a"
    assert state_of(engine, "a") is State.RUNNING
    assert engine.view.status().models["a"].leases == 1


async def test_a_drain_past_its_timeout_is_refused_and_loses_nothing(
    engines: EngineFactory,
) -> None:
    """Leases that outlast drain_timeout_s: models_busy naming the model and its lease
    count; nothing was stopped, and the lease still holds."""
    engine, runtime, _ = await engines(make_config(TWO, [80], drain_timeout_s=0.2))
    held = await engine.leases.acquire("a", owner=1)
    with pytest.raises(ModelsBusy) as refused:
        await engine.models.switch("b")
    assert refused.value.data["busy"] == {"a": 1}
    assert state_of(engine, "a") is State.RUNNING
    assert state_of(engine, "b") is State.STOPPED
    assert runtime.starts("b") == 0
    assert engine.leases.release(held.lease, owner=1).leases == 0


async def test_an_acquire_that_may_not_load_joins_a_switch_still_making_room(
    engines: EngineFactory,
) -> None:
    """While a switch to b drains a (b still stopped), an acquire of b that may not
    cause a load waits for that switch and is granted once b runs, with b started
    once; after a switch gave up (a drain past its timeout), the same acquire is
    would_load at once and loads nothing."""
    engine, runtime, _ = await engines(make_config(TWO, [80], drain_timeout_s=0.3))
    events = engine.events.subscribe()
    held = await engine.leases.acquire("a", owner=1)
    switching = asyncio.create_task(engine.models.switch("b", timeout=30))
    await next_of(events, "drain", model="a")
    assert state_of(engine, "b") is State.STOPPED
    joined = asyncio.create_task(engine.leases.acquire("b", owner=2, load=False, timeout=30))
    with pytest.raises(ModelsBusy):
        await switching  # a is still leased after drain_timeout_s
    with pytest.raises(WouldLoad):
        await joined  # the switch it joined gave up: it causes no load of its own
    switching = asyncio.create_task(engine.models.switch("b", timeout=30))
    await next_of(events, "drain", model="a")
    joined = asyncio.create_task(engine.leases.acquire("b", owner=2, load=False, timeout=30))
    engine.leases.release(held.lease, owner=1)
    assert (await joined).model == "b"
    assert (await switching).status == "success"
    assert runtime.starts("b") == 1
    with pytest.raises(WouldLoad):
        await engine.leases.acquire("a", owner=3, load=False)


async def test_force_evicts_a_leased_model(engines: EngineFactory) -> None:
    """An operator's `force` evicts without draining."""
    engine, _, _ = await engines(make_config(TWO, [80]))
    await engine.leases.acquire("a", owner=1)
    result = await engine.models.switch("b", force=True)
    assert result.unloaded_models == ["a"]
    assert state_of(engine, "a") is State.STOPPED


async def test_twenty_concurrent_acquires_make_one_backend(
    engines: EngineFactory,
) -> None:
    """Twenty acquires of a stopped model start it once; all get their lease when it is
    healthy."""
    engine, runtime, _ = await engines(make_config(TWO, [80]))
    runtime.behaviour["a"] = Behaviour(load_seconds=0.3)
    granted = await asyncio.gather(*(engine.leases.acquire("a", owner=n) for n in range(20)))
    assert runtime.starts("a") == 1
    assert len({g.lease for g in granted}) == 20
    assert engine.view.status().models["a"].leases == 20


async def test_an_acquire_whose_model_fails_gets_the_error_and_no_lease(
    engines: EngineFactory,
) -> None:
    """The load's error reaches the acquirer; no lease is left behind."""
    engine, runtime, _ = await engines(make_config(TWO, [80]))
    runtime.behaviour["a"] = Behaviour(exit_code=1)
    with pytest.raises(LoadFailed):
        await engine.leases.acquire("a", owner=1)
    assert engine.view.status().models["a"].leases == 0


async def test_stop_waits_for_requests_in_flight_unless_forced(
    engines: EngineFactory,
) -> None:
    """`stop` of a leased model drains it first (refused past the drain timeout);
    `force` stops it at once."""
    engine, _, _ = await engines(make_config(TWO, [80], drain_timeout_s=0.2))
    await engine.leases.acquire("a", owner=1)
    with pytest.raises(ModelsBusy):
        await engine.models.stop("a")
    assert state_of(engine, "a") is State.RUNNING
    assert (await engine.models.stop("a", force=True)).status == "stopped"


async def test_a_closed_connections_leases_end_and_the_client_lease_block(
    serve: ServeFactory,
) -> None:
    """Over the socket: `async with client.lease(model)` holds a lease for the block; a
    connection that closes holding leases loses them at once, so a switch needing that
    model goes through."""
    path, engine, _ = await serve(make_config(TWO, [80]))
    async with Client(path) as client:
        async with client.lease("a") as endpoint:
            assert endpoint.startswith("http://127.0.0.1:")
            assert engine.view.status().models["a"].leases == 1
        assert engine.view.status().models["a"].leases == 0
        await client.call("acquire", model="a")
        await client.call("acquire", model="a")
        assert engine.view.status().models["a"].leases == 2

    async def released() -> bool:
        return bool(engine.view.status().models["a"].leases == 0)

    await eventually(released, timeout=10)
    assert (await engine.models.switch("b")).unloaded_models == ["a"]


async def test_a_lease_waiter_that_gives_up_leaks_no_lease(serve: ServeFactory) -> None:
    """A router's request cancelled while its model loads (its client hung up): the lease
    granted when the load ends is released at once, so nothing holds the model."""
    path, engine, runtime = await serve(make_config(TWO, [80]))
    runtime.behaviour["a"] = Behaviour(load_seconds=0.5)
    events = engine.events.subscribe()
    async with Client(path) as client:
        waiting = asyncio.create_task(client.acquire("a"))
        await next_of(events, "state", model="a", to_state="loading")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await next_of(events, "state", model="a", to_state="running")

        async def released() -> bool:
            view = engine.view.status().models["a"]
            return bool(view.leases == 0 and view.status == "running")

        await eventually(released, timeout=10)  # while the connection stays open
        assert (await client.call("switch", model="b"))["unloaded_models"] == ["a"]


async def test_a_router_connection_with_many_waiting_acquires_still_releases(
    serve: ServeFactory,
) -> None:
    """One connection (a gateway's) holds a lease on a, then 20 more acquires of a wait
    behind a switch that drains a: its release is still read and answered, so the switch
    goes on, and the waiters get their turn after it (no deadlock, no drain timeout)."""
    path, engine, _ = await serve(make_config(TWO, [80]))
    events = engine.events.subscribe()
    async with Client(path) as router:
        held = await router.acquire("a")
        switching = asyncio.create_task(engine.models.switch("b"))
        await next_of(events, "drain", model="a")
        waiters = [asyncio.create_task(router.acquire("a")) for _ in range(20)]

        async def all_waiting() -> bool:
            return bool(engine.view.status().models["a"].waiting == 20)

        await eventually(all_waiting, timeout=10)
        await router.call("release", lease=held.lease)
        assert (await switching).unloaded_models == ["a"]
        granted = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert {lease.model for lease in granted} == {"a"}


async def test_acquires_past_the_connections_bound_are_refused_not_queued(
    serve: ServeFactory,
) -> None:
    """A connection may have `Limits.acquires` acquires waiting; the next is refused with
    `limit_reached` at once (its own id), and the connection goes on being served."""
    path, engine, runtime = await serve(make_config(TWO, [80]), Limits(acquires=2))
    runtime.behaviour["a"] = Behaviour(load_seconds=60)
    async with Client(path) as client:
        waiting = [asyncio.create_task(client.acquire("a")) for _ in range(2)]

        async def both_waiting() -> bool:
            return bool(engine.view.status().models["a"].waiting == 2)

        await eventually(both_waiting, timeout=10)
        with pytest.raises(RpcError) as refused:
            await client.acquire("a")
        assert refused.value.data == {"error": "limit_reached", "limit": 2}
        assert (await client.call("ping"))["pong"] is True
        await engine.models.stop("a", force=True)  # the load ends: its waiters are told
        for outcome in await asyncio.gather(*waiting, return_exceptions=True):
            assert isinstance(outcome, RpcError) and outcome.data["error"] == "load_failed"


async def test_requests_served_by_leases_count_as_demand(serve: ServeFactory) -> None:
    """Every lease is a request for cost_aware: a model kept busy through leases (granted
    at once, without a switch) is the one protected, and the idle one goes."""
    config = make_config(
        {
            "busy": {"gpu_memory_gb": 30, "load_time_seconds": 30},
            "idle": {"gpu_memory_gb": 30, "load_time_seconds": 30},
            "new": {"gpu_memory_gb": 30, "load_time_seconds": 30},
        },
        [80],
        eviction_policy="cost_aware",
    )
    path, engine, _ = await serve(config)
    await engine.models.switch("busy")
    await engine.models.switch("idle")  # asked for last: without the leases, busy would go
    async with Client(path) as router:
        for _ in range(20):
            async with router.lease("busy"):
                pass
    result = await engine.models.switch("new")
    assert result.unloaded_models == ["idle"]
    assert state_of(engine, "busy") is State.RUNNING


async def test_release_of_someone_elses_lease_is_refused(serve: ServeFactory) -> None:
    """A connection may end only its own leases."""
    path, engine, _ = await serve(make_config(TWO, [80]))
    async with Client(path) as mine, Client(path) as other:
        granted = await mine.call("acquire", model="a")
        with pytest.raises(Exception, match="no lease") as refused:
            await other.call("release", lease=granted["lease"])
        assert getattr(refused.value, "code", None) == -32014
        assert engine.view.status().models["a"].leases == 1


async def test_a_leased_model_is_never_idle_unloaded(engines: EngineFactory) -> None:
    """Leases count as use: a model with one is kept past idle_unload_after_s even when
    its metrics say idle; once released, it is unloaded."""
    models = {"a": {"gpu_memory_gb": 20, "idle_unload_after_s": 0.2}}
    engine, _, _ = await engines(make_config(models, [80], poll_interval_s=0.05))
    held = await engine.leases.acquire("a", owner=1)
    # A window of several idle periods (the only way to see that something does not
    # happen): the lease keeps it running throughout.
    with pytest.raises(TimeoutError):
        await wait_for_state(engine, "a", {State.STOPPING, State.STOPPED}, 1.0)
    engine.leases.release(held.lease, owner=1)
    assert await wait_for_state(engine, "a", {State.STOPPED}, 10) is State.STOPPED


async def test_restart_waits_for_requests_in_flight(engines: EngineFactory) -> None:
    """`restart` of a leased model drains it first: refused past the drain timeout with
    the model untouched."""
    engine, runtime, _ = await engines(make_config(TWO, [80], drain_timeout_s=0.2))
    held = await engine.leases.acquire("a", owner=1)
    with pytest.raises(ModelsBusy):
        await engine.models.restart("a")
    assert runtime.starts("a") == 1
    engine.leases.release(held.lease, owner=1)
    assert (await engine.models.restart("a")).status == "restarted"
    assert runtime.starts("a") == 2


async def _restarted(
    config: Config, runtime: FakeRuntime, gpu: SimulatedGpu, drain_timeout_s: float
) -> Engine:
    """A new daemon over the same host, once it has adopted `a` (still running): it
    holds a minute at most and reads metrics often."""
    daemon = {"adopt_grace_s": 60, "drain_timeout_s": drain_timeout_s, "poll_interval_s": 0.02}
    settings = config.daemon.model_copy(update=daemon)
    second = await start_over(config.model_copy(update={"daemon": settings}), runtime, gpu)
    if await wait_for_state(second, "a", {State.RUNNING}, 5) is not State.RUNNING:
        await second.shutdown()
        raise AssertionError("a was not adopted")
    return second


async def test_a_model_found_serving_at_startup_is_held_until_the_grace_ends(
    engines: EngineFactory,
) -> None:
    """A new daemon finds a running and answering a request whose lease ended with the
    old daemon: it holds a as if leased (adopt_grace_s), so a switch needing its memory
    drains instead of cutting the answer (here: models_busy), and a keeps running."""
    config = make_config(TWO, [80])
    first, runtime, gpu = await engines(config)
    await first.models.switch("a")
    runtime.server("a").token_seconds = 0.05
    body = {"model": "a", "prompt": "hi", "max_tokens": 10_000, "stream": True}
    async with aiohttp.ClientSession() as http:
        endpoint = config.models["a"].endpoint
        async with http.post(endpoint + "/v1/completions", json=body) as answer:
            assert (await answer.content.readline()).startswith(b"data: ")  # streaming
            second = await _restarted(config, runtime, gpu, drain_timeout_s=0.3)
            try:
                assert second.view.status().models["a"].leases == 1  # the daemon's hold
                # The drain outlasts many readings of a's metrics, each showing one running.
                with pytest.raises(ModelsBusy):
                    await second.models.switch("b")
                assert state_of(second, "a") is State.RUNNING
                assert runtime.starts("b") == 0
            finally:
                answer.close()  # (a backend ends an answer in flight only after a minute)
                await second.shutdown()


async def test_a_model_found_idle_at_startup_is_not_held(engines: EngineFactory) -> None:
    """The hold ends at the first reading of the backend's metrics that shows nothing in
    flight: a switch needing its memory after a restart does not wait out the grace."""
    config = make_config(TWO, [80])
    first, runtime, gpu = await engines(config)
    await first.models.switch("a")
    second = await _restarted(config, runtime, gpu, drain_timeout_s=60)
    try:

        async def released() -> bool:
            return int(second.view.status().models["a"].leases) == 0

        await eventually(released)
        result = await asyncio.wait_for(second.models.switch("b"), 10)  # far less than the grace
        assert result.unloaded_models == ["a"]
    finally:
        await second.shutdown()


async def test_a_router_reads_would_load_as_an_answer(serve: ServeFactory) -> None:
    """`acquire_if_loaded` (a router budgeting its callers' loads): a stopped model is an
    answer, NotLoaded with its state, holding nothing and starting nothing; a running
    one is a lease; and the same call with leave to load still loads it."""
    path, engine, _ = await serve(make_config(TWO, [80]))
    async with Client(path) as client:
        refused = await client.acquire_if_loaded("a", 5)
        assert isinstance(refused, NotLoaded)
        assert (refused.model, refused.state) == ("a", "stopped")
        assert state_of(engine, "a") is State.STOPPED
        granted = await client.acquire("a", 30)
        again = await client.acquire_if_loaded("a", 5)
        assert isinstance(again, LeaseResult) and again.lease != granted.lease
        assert engine.view.status().models["a"].leases == 2
        with pytest.raises(RpcError) as unknown:
            await client.acquire_if_loaded("nope", 5)
        assert unknown.value.data["error"] == "unknown_model"
