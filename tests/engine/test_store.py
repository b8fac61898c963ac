"""The state file: learned load times survive a restart; corruption is never fatal."""

from __future__ import annotations

import json
from pathlib import Path

from structlog.testing import capture_logs

from modeld.adapters.store import Learned, Store, remember_load
from modeld.core.states import State
from modeld.testing.fakes import Behaviour
from tests.support import EngineFactory, eventually, make_config, start_over, wait_for_state


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    """A saved state reads back; no temp file is left beside it."""
    store = Store(tmp_path / "state")
    learned = Learned()
    for seconds in (3.0, 1.0, 2.0, 9.0, 4.0, 5.0):
        remember_load(learned, "alpha", seconds)
    assert store.save(learned)
    assert store.load().models["alpha"].load_seconds == [1.0, 2.0, 9.0, 4.0, 5.0]
    assert store.load().models["alpha"].typical_load_s() == 4.0
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["state.json"]


def test_corrupt_file_is_reported_ignored_and_rewritten(tmp_path: Path) -> None:
    """Garbage or a wrong shape: a warning, an empty state, then a good file on save."""
    store = Store(tmp_path)
    for garbage in (b"{not json", b'{"models": {"alpha": {"load_seconds": "fast"}}}', b"\xff"):
        store.path.write_bytes(garbage)
        with capture_logs() as logs:
            assert store.load() == Learned()
        assert logs[0]["event"] == "store.corrupt_ignored"
        assert logs[0]["log_level"] == "warning"
    assert store.save(Learned())
    assert json.loads(store.path.read_text())["models"] == {}


def test_figures_that_would_break_plans_are_refused(tmp_path: Path) -> None:
    """Infinity, NaN or a negative figure in the file (hand-edited, or planted) is
    reported and ignored: a plan built on them would fit nothing, or everything."""
    store = Store(tmp_path)
    for figures in (
        '{"models": {"alpha": {"load_seconds": [Infinity]}}}',
        '{"models": {"alpha": {"peak_gb": {"0": -40}}}}',
        '{"models": {"alpha": {"residual_gb": {"0": NaN}}}}',
        '{"models": {"alpha": {"peak_gb": {"-1": 4}}}}',
    ):
        store.path.write_text(figures)
        with capture_logs() as logs:
            assert store.load() == Learned()
        assert logs[0]["event"] == "store.corrupt_ignored"


def test_unwritable_state_dir_is_not_fatal(tmp_path: Path) -> None:
    """A state dir that cannot be made is a warning, and saving reports False."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with capture_logs() as logs:
        assert not Store(blocker / "state").save(Learned())
    assert logs[0]["event"] == "store.save_failed"


async def test_learned_load_time_survives_restart(engines: EngineFactory) -> None:
    """A measured load replaces the configured estimate, also for the next daemon."""
    config = make_config({"alpha": {"gpu_memory_gb": 10, "load_time_seconds": 99}}, [60])
    first, _, _ = await engines(config)
    assert first.view.status().models["alpha"].estimated_load_time_seconds == 99
    assert first.view.status().models["alpha"].estimated_load_time_source == "configured"
    await first.models.switch("alpha")
    learned = first.view.status().models["alpha"].estimated_load_time_seconds
    assert learned < 99
    await first.shutdown()
    assert (config.daemon.state_dir / "state.json").exists()
    second, _, _ = await engines(config)
    assert second.view.status().models["alpha"].estimated_load_time_seconds == learned
    assert second.view.status().models["alpha"].estimated_load_time_source == "learned"


async def test_adopting_a_running_backend_learns_no_load_time(
    engines: EngineFactory,
) -> None:
    """A backend found running took no load time of modeld's: the next daemon adopts it
    without adding a near-zero 'load' to what it learned."""
    config = make_config({"alpha": {"gpu_memory_gb": 10}}, [60])
    first, runtime, gpu = await engines(config)
    runtime.behaviour["alpha"] = Behaviour(load_seconds=0.3)
    await first.models.switch("alpha")
    learned = first.view.status().models["alpha"].estimated_load_time_seconds
    store = Store(config.daemon.state_dir)

    async def saved() -> bool:
        model = store.load().models.get("alpha")
        return model is not None and bool(model.load_seconds)

    await eventually(saved)  # the save runs in the background
    second = await start_over(config, runtime, gpu)
    try:
        assert await wait_for_state(second, "alpha", {State.RUNNING}, 5) is State.RUNNING
        view = second.view.status().models["alpha"]
        assert view.estimated_load_time_seconds == learned
        assert view.last_load_seconds is None
    finally:
        await second.shutdown()
