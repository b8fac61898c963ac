"""Inference requests: a lease on the body's model (within the caller's budget and its
share of what waits here), the request forwarded to its backend (upstream.py), the
answer streamed back, the lease released at the end; each request's real outcome kept
for the log, the metrics and `/v1/requests`.

Only the allowlisted inference paths are forwarded (vLLM's admin endpoints, reachable
on a dev-mode backend, never are).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, overload

import structlog
from aiohttp import web

from modeld.core.gateway_config import GatewayConfig
from modeld.core.naming import not_found
from modeld.gateway.auth import BackendKeys, Identity, Keys, identity
from modeld.gateway.body import Bodies, Body
from modeld.gateway.budget import LoadBudget
from modeld.gateway.errors import GatewayError, cut
from modeld.gateway.failures import Failures, cut_off, ended
from modeld.gateway.link import DaemonLink
from modeld.gateway.loading import Feedback
from modeld.gateway.metrics import GatewayMetrics
from modeld.gateway.shares import BODIES, QUEUE, FairShares, Hold
from modeld.gateway.streaming import ClientGone
from modeld.gateway.upstream import ANSWERED, FAILED, Upstream
from modeld.wire.events import StateChanged
from modeld.wire.results import NotLoaded

# How many of the latest requests the gateway keeps to show (GET /v1/requests).
RECENT_KEPT = 100
log = structlog.get_logger("modeld.gateway.proxy")

# The inference paths vLLM's OpenAI-compatible server answers with a JSON body naming
# the model. Nothing else is forwarded: not /sleep, /wake_up, /is_sleeping,
# /collective_rpc, /reset_prefix_cache, /start_profile, /stop_profile, /metrics, ...
INFERENCE_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/score",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/score",
    "/pooling",
    "/classify",
    "/tokenize",
    "/detokenize",
)


# Set on a request that asks for a streamed answer (`"stream": true`).
STREAMED: web.RequestKey[bool] = web.RequestKey("streamed", bool)
# The metric label of a request for a name that is not configured.
UNKNOWN = "unknown"
# A refusal for a spent load budget is answered after this long (at most its
# Retry-After): a client that retries at once in a loop then costs the gateway, and the
# other keys, next to nothing.
REFUSAL_DELAY_S = 1.0
# States in which a lease would need a load or a wake.
IDLE_STATES = frozenset({"stopped", "sleeping", "failed"})


@dataclass(frozen=True)
class Waiting:
    """A request on its way to a lease: who sent it, its body as sent, and the hold on
    the bytes it keeps meanwhile (given back once the lease is granted)."""

    caller: Identity
    body: Body
    holding: Hold


class Proxy:
    """Forwards inference requests under leases, over one HTTP client session (and one
    per backend on a Unix socket)."""

    def __init__(
        self,
        link: DaemonLink,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        keys: tuple[Keys, BackendKeys],
    ) -> None:
        self._link = link
        self._config = config
        self._metrics = metrics
        accepted, backend_keys = keys
        self.upstream = Upstream(config, backend_keys)
        self.bodies = Bodies(config.max_body_bytes, config.body_timeout_s)
        self._budget = LoadBudget(config.key_loads_per_minute)
        # What waiting requests hold (a place, their bodies), each key its fair share.
        self.queue = FairShares(QUEUE, config.max_queue, 1, accepted.inference_count)
        self.waiting_bytes = FairShares(
            BODIES, config.max_waiting_bytes, config.max_body_bytes, accepted.inference_count
        )
        # The latest requests answered (model, path, status, seconds, key; never bodies).
        self.recent: deque[dict[str, object]] = deque(maxlen=RECENT_KEPT)
        self._in_flight = 0
        # Requests in flight per inference key (admins are not counted).
        self._per_key: Counter[str] = Counter()
        # Leases asked for that may cause a load, per model, until granted or refused:
        # others' requests for that model join the load (the daemon says) at no budget.
        self._loads_asked: Counter[str] = Counter()
        # Requests each backend is answering: ended at once when its model fails.
        self.failures = Failures()
        link.on_state(self._state_changed)

    def _state_changed(self, event: StateChanged) -> None:
        """A model the daemon says failed: its requests in flight (and its adapters',
        served by the same engine) end now with an error, not at max_request_s."""
        if event.to_state != "failed":
            return
        why = event.failure or event.reason
        ended = self.failures.failed(event.model, why)
        for adapter, base in self._link.bases.items():
            if base == event.model:
                ended += self.failures.failed(adapter, why)
        if ended:
            log.warning("gateway.requests_ended", model=event.model, count=ended, reason=cut(why))

    @property
    def in_flight(self) -> int:
        """Inference requests being handled now (waiting included)."""
        return self._in_flight

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One inference request, from lease to the answer's end."""
        caller = identity(request)
        assert caller is not None, "the keys middleware runs first"
        if self._in_flight >= self._config.max_requests:
            raise GatewayError(
                "too_many_requests",
                f"the gateway has {self._in_flight} requests in flight (max_requests)",
                limit=self._config.max_requests,
            )
        counted = not caller.admin
        if counted and self._per_key[caller.name] >= self._config.max_requests_per_key:
            raise GatewayError(
                "too_many_requests",
                f"the key {caller.name} has {self._per_key[caller.name]} requests in flight "
                "(max_requests_per_key)",
                limit=self._config.max_requests_per_key,
            )
        if counted:
            self._per_key[caller.name] += 1
        self._in_flight += 1
        self._metrics.in_flight.inc()
        label: str | None = None
        failed: GatewayError | None = None
        status, started = 500, time.monotonic()
        # The body's bytes, counted from the first one read until the lease is granted.
        holding = Hold(self.waiting_bytes, caller)
        try:
            body = await self.bodies.read(request, holding.grow)
            asked, request[STREAMED] = await self.bodies.model(body)
            model = self._link.canonical(asked)  # an alias names its model
            known = self._link.models
            # Only configured names become labels: invented ones share one.
            label = model if known is not None and asked in known else UNKNOWN
            if known is not None and asked not in known:
                raise GatewayError(
                    "unknown_model",
                    not_found(asked, known, self._link.aliases),
                    model=asked,
                    available=sorted(known),
                )
            leased = self._leased(request, Waiting(caller, body, holding), model, asked)
            response = await self._cut_after(request, leased)
            status = response.status
            return response
        except GatewayError as exc:
            status, failed = exc.status, exc
            raise
        except ClientGone as gone:
            status = self._hung_up(request)
            return gone.response
        except asyncio.CancelledError:
            status = self._hung_up(request)
            raise
        finally:
            holding.release()
            if (broke := request.get(FAILED)) is not None:
                # Its headers said 200 (and the gateway dropped the connection on a cut):
                # what it came to is the failure's, not a 200 or a hang-up.
                status, failed = broke.status, broke
            self._in_flight -= 1
            if counted:
                self._per_key[caller.name] -= 1
                if not self._per_key[caller.name]:
                    del self._per_key[caller.name]
            self._metrics.in_flight.dec()
            if label is not None:
                self._metrics.requests.labels(label, request.path, str(status)).inc()
                seconds = round(time.monotonic() - started, 3)
                self.recent.append(
                    {"at": time.time(), "model": label, "path": request.path}
                    | {"status": status, "seconds": seconds, "key": caller.name}
                    | {"error": failed.kind if failed is not None else None}
                    | {"streamed": bool(request.get(STREAMED))}
                )
            # The access log (never the body, never the key; a name cut short).
            log.info(
                "gateway.request",
                model=cut(asked) if label is not None else None,
                path=request.path,
                status=status,
                error=failed.kind if failed is not None else None,
                seconds=round(time.monotonic() - started, 4),
                key=caller.name,
                peer=request.remote,
            )

    def _hung_up(self, request: web.Request) -> int:
        """The status to log for a request whose client left: its answer's own when it
        was written whole before (`Connection: close`), else 499 (nginx's name for it)."""
        answered: int | None = request.get(ANSWERED)
        if answered is not None:
            return answered
        broke: GatewayError | None = request.get(FAILED)
        if broke is not None:
            return broke.status  # the gateway dropped the connection, not the client
        self._metrics.hangups.inc()
        return 499

    async def _cut_after(
        self, request: web.Request, answering: Awaitable[web.StreamResponse]
    ) -> web.StreamResponse:
        """`answering` within max_request_s: past it, an answer under way is cut (the
        connection dropped, so the client sees it end abruptly) and one not yet begun is
        504; either way the lease ends."""
        limit = self._config.max_request_s
        try:
            async with asyncio.timeout(limit):
                return await answering
        except TimeoutError:
            log.warning("gateway.request_cut", path=request.path, max_request_s=limit)
            if request.transport is not None:
                request.transport.abort()
            raise GatewayError(
                "upstream_timeout", f"the request ran past max_request_s ({limit:g}s)"
            ) from None

    async def _leased(
        self, request: web.Request, waiting: Waiting, model: str, asked: str
    ) -> web.StreamResponse:
        """The answer under a lease; a budgeted key's request that would cause a load or
        a wake is counted against its budget first (429 once it is spent)."""
        caller = waiting.caller
        if caller.admin or not self._budget.limited:
            return await self._serve(request, model, waiting, load=True, asked=asked)
        retry = self._budget.spent(caller.name)
        idle = self._idle(model) and not self._loads_asked[model]
        if retry is None or not idle:
            # The daemon says whether it would load (the gateway's view is only a hint).
            answered = await self._serve(request, model, waiting, load=False, asked=asked)
            if answered is not None:
                return answered
            retry = self._budget.take(caller.name)
        # else: spent, the model stopped, asleep or failed as the daemon last said (an
        # unknown state is asked about) and no load of it asked for here: refused without
        # a round trip to the daemon, so a thrashing key costs the others next to nothing.
        if retry is not None:
            self._metrics.key_loads_refused.labels(caller.name).inc()
            limit = self._budget.per_minute
            refusal = GatewayError(
                "load_rate_limited",
                f"{model} is not running, and the key {caller.name} has caused {limit} "
                f"loads in the last minute (key_loads_per_minute); try again in {retry}s "
                "or use a model that runs",
                model=model,
                limit=limit,
            )
            refusal.retry_after = retry
            await asyncio.sleep(min(REFUSAL_DELAY_S, retry))
            raise refusal
        self._metrics.key_loads.labels(caller.name).inc()
        return await self._serve(request, model, waiting, load=True, asked=asked)

    def _idle(self, model: str) -> bool:
        """Whether a request for `model` would cause a load, as the daemon last said: it
        is stopped, asleep or failed (an adapter whose base runs loads in a fraction of a
        second: not a load the budget counts)."""
        base = self._link.bases.get(model)
        if base is not None and self._link.states.get(base) == "running":
            return False
        return self._link.states.get(model) in IDLE_STATES

    @overload
    async def _serve(
        self, request: web.Request, model: str, waiting: Waiting, load: Literal[True], asked: str
    ) -> web.StreamResponse: ...

    @overload
    async def _serve(
        self, request: web.Request, model: str, waiting: Waiting, load: Literal[False], asked: str
    ) -> web.StreamResponse | None: ...

    async def _serve(
        self, request: web.Request, model: str, waiting: Waiting, load: bool, asked: str
    ) -> web.StreamResponse | None:
        """Lease `model` (asked for as `asked`: its name or an alias) and forward the
        request, under the name its backend serves it by; None (`load` false) where the
        daemon says that would need a load or a wake. A streamed request that may wait for
        a load gets its headers and loading comments meanwhile (loading.py)."""
        started, feedback = time.monotonic(), None
        state = self._link.states.get(model)
        # A request that will wait (for a load, or its turn) takes a place in the queue.
        place = Hold(self.queue, waiting.caller)
        if state != "running":
            place.grow(1)
        if request.get(STREAMED) and state != "running" and (load or state == "loading"):
            feedback = Feedback(request, model, self._link, asked)
            await feedback.start()
        asking = _Asking(self._loads_asked, model if load else None)
        try:
            size = len(waiting.body.sent)  # named in a crash loop's reason
            timeout = self._config.acquire_timeout_s
            async with self._link.lease(model, timeout, load, size) as lease:
                asking.done()
                if isinstance(lease, NotLoaded):
                    if load or (feedback is not None and feedback.response is not None):
                        # Its headers said 200 while it joined a load that then failed:
                        # the stream's error event says so (the daemon never refuses a
                        # lease that may load this way).
                        raise GatewayError(
                            "would_load", lease.message, model=lease.model, state=lease.state
                        )
                    return None
                place.release()
                waiting.holding.release()
                self._metrics.load_wait.labels(model).observe(time.monotonic() - started)
                if feedback is not None:
                    await feedback.stop()
                served = lease.granted.served_model_name
                data = await self.bodies.upstream(waiting.body, served if served != asked else None)
                early = feedback.response if feedback is not None else None
                # The request's hold ends right after, with the block: its model's standing
                # lease (shared, no round trip) then lingers for the next request.
                with self.failures.answering(model) as ending:
                    try:
                        return await self.upstream.forward(
                            request, lease.granted.endpoint, model, data, early
                        )
                    except asyncio.CancelledError:
                        return ended(request, ending, model, early)
                    finally:
                        lease.broken = cut_off(request, sys.exception())
        except GatewayError as exc:
            if feedback is None or feedback.response is None:
                raise
            await feedback.stop()
            request[FAILED] = exc  # its headers said 200: the error event says otherwise
            return await feedback.fail(exc)
        finally:
            asking.done()
            place.release()
            if feedback is not None:
                await feedback.stop()


class _Asking:
    """A lease asked for with leave to load `model` (None: without), counted until done."""

    def __init__(self, counts: Counter[str], model: str | None) -> None:
        self._counts, self._model = counts, model
        if model is not None:
            counts[model] += 1

    def done(self) -> None:
        """The lease was granted or refused (again: nothing)."""
        if self._model is not None:
            self._counts[self._model] -= 1
            if not self._counts[self._model]:
                del self._counts[self._model]
            self._model = None
