"""The registry: the set of Models and the config in force, and what it says as they change.

It is the only writer of both (a reload applies its plan here; a stop forgets a model a
reload removed). Each Model changes its own state through its intents (model.py); the
registry hears every transition they announce, logs and publishes it as an event, and
tells the listeners (learning, the history, the metrics, the restart policy: engine.py
says what else each hears, and from whom).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

import structlog

from modeld.core.config import Config
from modeld.core.errors import UnknownModel
from modeld.core.naming import not_found
from modeld.engine.facts import Revision
from modeld.engine.model import Model, Transition
from modeld.wire.events import EventBus, StateChanged

log = structlog.get_logger("modeld.engine.registry")


Listener = Callable[[Transition], None]
# cost_aware: at each request every model's demand decays by this factor, so favourites
# that stop being asked for stop being protected within a few dozen requests.
DEMAND_DECAY = 0.95


class Registry:
    """Holds the Models and the config in force; hears and announces their transitions."""

    def __init__(self, config: Config) -> None:
        self._config = config
        # What the registry says as models change: each transition (and each step of a
        # switch) as an event, and a count every shown change bumps (`status`).
        self.events = EventBus()
        self.revision = Revision()
        self._models = {name: self._new_model(name, config) for name in config.models}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()

    @property
    def config(self) -> Config:
        """The config in force (a reload replaces it here, nowhere else)."""
        return self._config

    @property
    def models(self) -> Mapping[str, Model]:
        """Every Model by name (a live view: a reload adds and removes here)."""
        return self._models

    def model(self, name: str, managed: bool = False) -> Model:
        """A model by name or alias; UnknownModel (with the names available) if there is
        none, or (`managed`) if a reload removed it from the config."""
        model = self._models.get(self.canonical(name))
        if model is None or (managed and model.unmanaged):
            available = sorted(n for n, m in self._models.items() if not m.unmanaged)
            if model is not None:
                message = (
                    f"Model '{name}' not found: it was removed from the config (it runs "
                    "unmanaged until stopped)."
                )
            else:
                message = not_found(name, available, self._config.aliases())
            raise UnknownModel(message, model=name, available=available)
        return model

    def canonical(self, name: str) -> str:
        """The model a name or one of its aliases names (an unknown name, unchanged)."""
        return self._config.canonical(name)

    def replace(self, config: Config, added: Iterable[str], removed: Iterable[str]) -> None:
        """A reload's outcome: the new config in force, its new models (stopped), the
        removed ones gone (each Model's own changes are made through its intents)."""
        for name in added:
            self._models[name] = self._new_model(name, config)
        for name in removed:
            del self._models[name]
        self._config = config
        self.revision.bump()

    def forget(self, model: Model) -> None:
        """A model a reload removed has stopped: it is no longer known."""
        if self._models.get(model.name) is model:
            del self._models[model.name]
            log.info("model.forgotten", model=model.name)

    def count_demand(self, model: Model, requests: int = 1) -> None:
        """`requests` for `model` (a switch, a lease granted without one, or the requests
        a standing lease served): cost_aware's demand decays everyone's and counts each
        for it, as that many one after another would; lru's clock moves."""
        factor = DEMAND_DECAY**requests
        for other in self._models.values():
            other.demand_decayed(factor)
        # Each request added 1 and was decayed by those after it: a geometric sum.
        model.asked_for((1 - factor) / (1 - DEMAND_DECAY))

    def on_transition(self, listener: Listener) -> None:
        """Call `listener` after every transition, in the order they were added."""
        self._listeners.append(listener)

    async def changed(self) -> None:
        """Return at the next transition."""
        await self._changed.wait()

    def _new_model(self, name: str, config: Config) -> Model:
        """A stopped Model for a configured model."""
        return Model(config.models[name], self.revision, self._announce)

    def _announce(self, event: Transition) -> None:
        """A Model changed state: log it, publish it, tell the listeners, wake waiters."""
        failure = event.failure
        announced = StateChanged(
            model=event.model.name,
            from_state=event.old.value,
            to_state=event.new.value,
            reason=event.reason,
            failure=failure.reason if failure is not None else None,
            exit_code=failure.exit_code if failure is not None else None,
        )
        # The log line carries the failure's fields only when there is one.
        unlogged = {"type", "seq", "time", "dropped_before"}
        if failure is None:
            unlogged |= {"failure", "exit_code"}
        log.info("model.transition", **announced.model_dump(exclude=unlogged))
        self.events.publish(announced)
        for listener in self._listeners:
            listener(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
