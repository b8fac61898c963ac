"""Requests being answered, per model: when the daemon says a model failed (its engine
stopped answering a token, died, or its base did), the requests still waiting on its
backend end at once with an error (a hung engine never sends another byte, and would
keep them until max_request_s)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web

from modeld.gateway.errors import GatewayError, cut
from modeld.gateway.upstream import BEGUN, FAILED

# The errors of a request its backend cut off: said when its lease is given back, so
# that the daemon counts it if the backend died under it (a crash loop's evidence).
CUT_OFF = frozenset({"upstream_cut", "upstream_unreachable", "model_failed"})


class Ending:
    """One request being answered by a model's backend, and why it was ended (None:
    it was not)."""

    __slots__ = ("task", "why")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.why: str | None = None


class Failures:
    """The requests each model's backend is answering; `failed` ends them."""

    def __init__(self) -> None:
        self._answering: dict[str, set[Ending]] = {}

    @contextlib.contextmanager
    def answering(self, model: str) -> Iterator[Ending]:
        """For the block, the current task answers a request of `model`'s: a failure of
        the model cancels it (the caller turns that into its error: `ending.why`). A task
        is only ever cancelled while suspended inside the block, so the cancellation
        always lands there."""
        task = asyncio.current_task()
        assert task is not None
        ending = Ending(task)
        self._answering.setdefault(model, set()).add(ending)
        try:
            yield ending
        finally:
            endings = self._answering.get(model)
            if endings is not None:
                endings.discard(ending)
                if not endings:
                    del self._answering[model]

    def failed(self, model: str, why: str) -> int:
        """`model` failed: end its requests in flight; how many there were."""
        endings = self._answering.pop(model, set())
        for ending in endings:
            ending.why = why
            ending.task.cancel()
        return len(endings)


def ended(
    request: web.Request, ending: Ending, model: str, early: web.StreamResponse | None
) -> web.StreamResponse:
    """A request cancelled while its backend answered: ended because its model failed
    (`model_failed`: as a refusal before the answer began, else with the connection
    dropped, as for an answer the backend broke off); any other cancellation goes on."""
    task = asyncio.current_task()
    assert task is not None
    if ending.why is None or task.uncancel() > 0:
        raise asyncio.CancelledError
    failed = GatewayError(
        "model_failed", f"{model} failed while answering: {cut(ending.why)}", model=model
    )
    begun: web.StreamResponse | None = request.get(BEGUN)
    if begun is None or begun is early:
        raise failed  # (a streamed request that waited: its error event says so)
    request[FAILED] = failed
    if request.transport is not None:
        request.transport.abort()
    return begun


def cut_off(request: web.Request, raised: BaseException | None) -> bool:
    """Whether the backend cut a request off: the error it ended with, raised or (for an
    answer under way) kept on the request."""
    error = raised if isinstance(raised, GatewayError) else request.get(FAILED)
    return isinstance(error, GatewayError) and error.kind in CUT_OFF
