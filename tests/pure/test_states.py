"""The transition table, and a Model that moves only through it."""

from __future__ import annotations

import pytest

from modeld.adapters.vllm import Health
from modeld.core.config import parse_config
from modeld.core.states import TRANSITIONS, Failure, IllegalTransition, State, check_transition
from modeld.engine.facts import Revision
from modeld.engine.model import Model, Transition

S = State
# The design's table, spelled out: a change to core/states.py must change this too.
ALLOWED = {
    (S.STOPPED, S.LOADING),
    (S.LOADING, S.RUNNING),
    (S.LOADING, S.FAILED),
    (S.LOADING, S.STOPPING),
    (S.LOADING, S.SLEEPING),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.SLEEPING),
    (S.SLEEPING, S.LOADING),
    (S.SLEEPING, S.STOPPING),
    (S.SLEEPING, S.FAILED),
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.FAILED),
    (S.FAILED, S.LOADING),
    (S.FAILED, S.STOPPING),
    (S.FAILED, S.STOPPED),
}


@pytest.mark.parametrize("old", list(State))
@pytest.mark.parametrize("new", list(State))
def test_exactly_the_tables_moves_are_allowed(old: State, new: State) -> None:
    """check_transition allows a move iff the table has it (health only through loading:
    no stopped -> running)."""
    assert ((old, new) in ALLOWED) == (new in TRANSITIONS[old])
    if (old, new) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def model() -> tuple[Model, list[Transition], Revision]:
    """A stopped Model whose announcements are kept."""
    config = parse_config(
        {
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {"m": {"runtime": "process", "command": ["x"], "endpoint": "http://h:1"}},
        }
    )
    heard: list[Transition] = []
    revision = Revision()
    return Model(config.models["m"], revision, heard.append), heard, revision


def test_a_model_announces_each_move_and_counts_generations() -> None:
    """Intents move the model through the table, each announced once, typed, in order;
    every move bumps the generation and the status revision."""
    m, heard, revision = model()
    m.begin_start()
    m.became_running("healthy", load_s=1.5)
    m.parked("parked for x")
    m.begin_wake()
    m.woke(0.25)
    m.stopping("requested", None)
    m.stopped("requested")
    assert [(t.old, t.new) for t in heard] == [
        (S.STOPPED, S.LOADING),
        (S.LOADING, S.RUNNING),
        (S.RUNNING, S.SLEEPING),
        (S.SLEEPING, S.LOADING),
        (S.LOADING, S.RUNNING),
        (S.RUNNING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
    ]
    assert heard[1].load_s == 1.5 and heard[4].wake_s == 0.25
    assert m.generation == 7 and m.loading.last_s == 1.5 and m.sleep.last_wake_s == 0.25
    assert revision.value >= 7


def test_an_intent_outside_the_table_changes_nothing() -> None:
    """A stopped model cannot become running: the intent raises and the model stays."""
    m, heard, _ = model()
    with pytest.raises(IllegalTransition):
        m.became_running("healthy")
    assert m.state is S.STOPPED and m.generation == 0 and not heard


def test_a_stale_observation_is_dropped() -> None:
    """An exit or a 503 seen at an older generation changes nothing; a current one fails
    the model with the reason the restart policy follows."""
    m, heard, _ = model()
    m.begin_start()
    seen_at = m.generation
    m.became_running("healthy")
    m.observed_exit(seen_at, 1, ["old"])
    m.observed_health(seen_at, Health.DEAD)
    assert m.state is S.RUNNING
    m.observed_health(m.generation, Health.DEAD)
    assert m.status.state is S.FAILED and heard[-1].reason == "engine died"
    assert m.status.failure == Failure("/health answered 503: the engine died")


def test_settings_a_reload_left_pending_apply_at_the_next_stop() -> None:
    """A config changed while running waits; the stop applies it and says so."""
    m, heard, _ = model()
    newer = m.config.model_copy(update={"description": "newer"})
    m.begin_start()
    assert heard[-1].config_changed is False
    m.became_running("healthy")
    m.reconfigure_later(newer)
    assert m.config.description != "newer" and m.pending_config is newer
    m.stopping("requested", None)
    m.stopped("requested")
    assert heard[-1].new is S.STOPPED and heard[-1].config_changed is True
    assert m.config is newer and m.pending_config is None
