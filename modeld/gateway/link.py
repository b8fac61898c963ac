"""The gateway's connections to modeld, as an ordinary client of its socket.

Three connections, each reconnected when the daemon restarts: one for leases (many
acquires wait on it at once; the daemon answers its releases at once however many wait),
one for everything else (status, switch, ...; a switch waiting for a drain never holds
up a release), and one subscribed to events, fanned out to the gateway's own
subscribers. Every call has a deadline: a daemon that stops answering costs a request
its deadline, never the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog

from modeld.client import Client, DaemonUnreachable, RpcError, UnreadableAnswer
from modeld.gateway.errors import GatewayError
from modeld.gateway.standing import Held, StandingLeases
from modeld.wire.events import (
    ConfigReloaded,
    Draining,
    EventBus,
    GatewayConnected,
    GatewayDisconnected,
    StateChanged,
)
from modeld.wire.results import LeaseResult, NotLoaded
from modeld.wire.status import Status

log = structlog.get_logger("modeld.gateway.link")

CONNECT_TIMEOUT_S = 5.0
# Calls answered from memory (status, models, release) must come back within this.
CALL_TIMEOUT_S = 30.0
# Beyond a waiting call's own timeout: the daemon's answer may take this much longer.
ANSWER_MARGIN_S = 30.0
RECONNECT_MAX_S = 10.0
# After a failed connection attempt, requests fail at once for this long.
RETRY_AFTER_S = 0.5
# How long a lease lost with a restarted daemon may take to be renewed.
RENEW_S = 60.0
T = TypeVar("T")


class _Connection:
    """One reconnecting connection: a call finds it open, or opens it again."""

    def __init__(self, socket: Path) -> None:
        self._socket = socket
        self._client: Client | None = None
        self._opening = asyncio.Lock()
        # The last failed attempt: requests meanwhile fail at once instead of each
        # queueing for an attempt of its own behind the lock.
        self._failed: tuple[float, GatewayError] | None = None

    async def client(self) -> Client:
        """The open connection (opened again if the daemon closed it)."""
        async with self._opening:
            if self._client is not None and not self._client.closed:
                return self._client
            failed = self._failed
            if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER_S:
                raise failed[1]
            await self.close()
            client = Client(self._socket)
            try:
                await asyncio.wait_for(client.__aenter__(), CONNECT_TIMEOUT_S)
            except (DaemonUnreachable, TimeoutError) as exc:
                error = (
                    GatewayError.from_unreachable(exc)
                    if isinstance(exc, DaemonUnreachable)
                    else GatewayError(
                        "daemon_unreachable",
                        f"modeld did not accept a connection on {self._socket}",
                    )
                )
                self._failed = (time.monotonic(), error)
                raise error from None
            self._failed = None
            self._client = client
            return client

    def daemon_back(self) -> None:
        """The daemon answers again: the next call connects at once."""
        self._failed = None

    async def close(self) -> None:
        """Close the connection (its leases end with it)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.__aexit__(None, None, None)


async def _mapped(call: Awaitable[T], timeout: float, late: GatewayError) -> T:
    """`call` within `timeout` (else `late`), the daemon's errors as GatewayError."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except RpcError as exc:
        raise GatewayError.from_rpc(exc) from None
    except DaemonUnreachable as exc:
        raise GatewayError.from_unreachable(exc) from None
    except UnreadableAnswer as exc:
        raise GatewayError("upstream_error", str(exc)) from None
    except TimeoutError:
        raise late from None


async def _answer(client: Client, method: str, timeout: float, /, **params: object) -> Any:
    """A call with its deadline, errors as GatewayError."""
    late = GatewayError("daemon_unreachable", f"modeld did not answer {method} within {timeout:g}s")
    return await _mapped(client.call(method, **params), timeout, late)


class Lease:
    """A lease the gateway holds from the daemon: a model's standing lease, which its
    requests share (standing.py)."""

    def __init__(self, client: Client, granted: LeaseResult) -> None:
        self._client = client
        self.granted = granted
        self.model = granted.model
        self._released = False
        self._ending: asyncio.Future[None] | None = None

    @property
    def client(self) -> Client:
        """The connection it is held on."""
        return self._client

    @property
    def lost(self) -> bool:
        """Its request is still in flight, but the daemon's end of the lease is gone with
        the connection (the daemon restarted)."""
        return self._client.closed and not self._released

    def renewed(self, client: Client, granted: LeaseResult) -> None:
        """The daemon granted it again on a new connection; ended at once if its request
        finished meanwhile."""
        self._client = client
        self.granted = self.granted.model_copy(update={"lease": granted.lease})
        if self._released:
            self._released = False
            self._ending = asyncio.ensure_future(self.release())

    async def release(self) -> None:
        """End it (once; a no-op after). Answered inline by the daemon, so it is quick."""
        if self._released:
            return
        self._released = True
        if self._client.closed:
            return  # it ended with the connection
        with contextlib.suppress(GatewayError):
            await asyncio.shield(
                _answer(self._client, "release", CALL_TIMEOUT_S, lease=self.granted.lease)
            )


class DaemonLink:
    """The gateway's side of the socket: calls, leases and events."""

    def __init__(
        self,
        socket: Path,
        models: frozenset[str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.socket = socket
        self._calls = _Connection(socket)
        self._leases = _Connection(socket)
        self.events = EventBus()
        self.connected = asyncio.Event()
        # The configured model names, as the daemon last told them (None: not yet known):
        # a request for another name is refused without asking the daemon.
        # Alias -> model, as the daemon last said (the config file's, until it does).
        self.aliases: dict[str, str] = dict(aliases or {})
        self.models = None if models is None else models | frozenset(self.aliases)
        # Each model's state as the daemon's events last said (a hint: the daemon decides).
        self.states: dict[str, str] = {}
        # Each adapter's base (docs/adapters.md), as the daemon last said.
        self.bases: dict[str, str] = {}
        # The leases of requests in flight (renewed after a daemon restart).
        self._held: set[Lease] = set()
        self._renewing: asyncio.Task[None] | None = None
        # The lease connection being watched: when it drops, its leases are renewed at once.
        self._watched: Client | None = None
        # Leases taken again after their connection was lost (since start).
        self.renewals = 0
        self._background: set[asyncio.Task[None]] = set()
        # Each model's standing lease, shared by its requests (standing.py).
        self._standing = StandingLeases(self._held, self._spawn, lambda: self.bases)
        self._state_listeners: list[Callable[[StateChanged], None]] = []

    def on_state(self, listener: Callable[[StateChanged], None]) -> None:
        """Call `listener` with each state change the daemon announces."""
        self._state_listeners.append(listener)

    async def call(self, method: str, /, *, wait_s: float | None = None, **params: object) -> Any:
        """Call `method` with `params`; a waiting call (`wait_s` given) may take that long
        and a margin, else it is answered from memory within CALL_TIMEOUT_S."""
        limit = CALL_TIMEOUT_S if wait_s is None else wait_s + ANSWER_MARGIN_S
        return await _answer(await self._calls.client(), method, limit, **params)

    @contextlib.asynccontextmanager
    async def lease(
        self, model: str, timeout_s: float, load: bool = True, request_bytes: int | None = None
    ) -> AsyncIterator[Held | NotLoaded]:
        """Hold `model` for the block: it runs, and is not evicted, meanwhile. The
        request joins the model's standing lease when the gateway holds one (no round
        trip), else acquires one (standing.py). With `load` false, NotLoaded (nothing
        held) where that would need a load or a wake of its own. A block cancelled
        while it waits leaks nothing (Client.acquire)."""
        standing = self._standing.join(model, self.states.get(model) == "running")
        if standing is None:
            client = await self._lease_client()
            self._standing.report_now()
            late = GatewayError(
                "timeout", f"{model} did not run within {timeout_s:g}s", model=model
            )
            asking: Awaitable[LeaseResult | NotLoaded] = (
                client.acquire(model, timeout_s, request_bytes, standing=True)
                if load
                else client.acquire_if_loaded(model, timeout_s, request_bytes, standing=True)
            )
            granted = await _mapped(asking, timeout_s + ANSWER_MARGIN_S, late)
            if isinstance(granted, NotLoaded):
                yield granted
                return
            standing = self._standing.adopt(Lease(client, granted))
        held = Held(standing.lease.granted)
        try:
            yield held
        finally:
            self._standing.leave(standing, held, request_bytes)

    async def status(self) -> Status:
        """The daemon's `status`, read into its wire type."""
        client = await self._calls.client()
        late = GatewayError(
            "daemon_unreachable", f"modeld did not answer status within {CALL_TIMEOUT_S:g}s"
        )
        return await _mapped(client.status(), CALL_TIMEOUT_S, late)

    async def _lease_client(self) -> Client:
        """The lease connection, watched: if it drops while the daemon still runs, the
        leases of requests still streaming are taken again at once, not only once the
        events connection notices."""
        client = await self._leases.client()
        if client is not self._watched:
            self._watched = client
            self._spawn(self._renew_when_closed(client))
        return client

    async def _renew_when_closed(self, client: Client) -> None:
        await client.wait_closed()
        if self._held:
            await self._renew()

    def canonical(self, name: str) -> str:
        """The model a name or an alias names (as the daemon last said)."""
        return self.aliases.get(name, name)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_models(self) -> None:
        """Learn the configured names from the daemon (at each connection, and after it
        reloads its config)."""
        try:
            models = (await self.status()).models
        except GatewayError as exc:
            log.warning("gateway.models_unknown", reason=exc.message)
            return
        self.aliases = {alias: name for name, view in models.items() for alias in view.aliases}
        self.models = frozenset(models) | frozenset(self.aliases)
        self.states = {name: view.status for name, view in models.items()}
        self.bases = {name: view.base for name, view in models.items() if view.base}

    async def _renew(self) -> None:
        """The daemon is back: take again the leases of requests still streaming (theirs
        ended with the old connection), so that no model is evicted under them. Only for
        models the daemon has running or adopting: a backend that died with the old
        daemon is not loaded again for a request whose answer is gone."""
        self._standing.renewed()  # idle standing leases lost are simply dropped
        lost = [lease for lease in self._held if lease.lost]
        if not lost:
            return
        try:
            models = (await self.status()).models
            client = await self._lease_client()
        except GatewayError as exc:
            log.warning("gateway.leases_not_renewed", reason=exc.message, count=len(lost))
            return
        for lease in lost:
            view = models.get(lease.model)
            if view is None or view.status not in ("running", "loading"):
                continue
            late = GatewayError("timeout", f"{lease.model}: no lease within {RENEW_S:g}s")
            try:
                taken = client.acquire(lease.model, RENEW_S, standing=True)
                granted = await _mapped(taken, RENEW_S, late)
            except GatewayError as exc:
                log.warning("gateway.lease_not_renewed", model=lease.model, reason=exc.message)
                continue
            lease.renewed(client, granted)
            self.renewals += 1
        self._standing.renewed()  # their counts go to the daemon again
        log.info("gateway.leases_renewed", count=len(lost))

    async def follow_events(self) -> None:
        """Forward the daemon's events to `events` for as long as the gateway runs,
        subscribing again after the daemon restarts (and saying so in the stream)."""
        delay = 0.5
        while True:
            try:
                async with Client(self.socket) as client:
                    subscription = await asyncio.wait_for(client.subscribe(), CALL_TIMEOUT_S)
                    self.connected.set()
                    for connection in (self._calls, self._leases):
                        connection.daemon_back()  # no fail-fast window once it answers
                    self.events.publish(GatewayConnected(socket=str(self.socket)))
                    # (On its own: a renewal that waits for an adopted model's health
                    # must not hold up the events.)
                    self._renewing = asyncio.create_task(self._renew())
                    self._spawn(self._refresh_models())
                    delay = 0.5
                    async for event in subscription:
                        self.events.forward(event)
                        if isinstance(event, StateChanged):
                            self.states[event.model] = event.to_state
                            if event.to_state != "running":
                                self._standing.closing(event.model)
                            for listener in self._state_listeners:
                                listener(event)
                        elif isinstance(event, Draining):
                            self._standing.closing(event.model)
                        elif isinstance(event, ConfigReloaded):
                            self._spawn(self._refresh_models())
            except (DaemonUnreachable, TimeoutError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("gateway.daemon_lost", reason=str(exc))
                    self.events.publish(GatewayDisconnected(reason=str(exc)))
                self.connected.clear()
            # Back off between attempts (a daemon restart takes seconds).
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def close(self) -> None:
        """Close the connections (the leases of requests still in flight end)."""
        waiting = [*self._background, *([self._renewing] if self._renewing else [])]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await self._leases.close()
        await self._calls.close()
