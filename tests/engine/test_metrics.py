"""Prometheus metrics, scraped over HTTP and parsed with prometheus-client's parser."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modeld.adapters.gpu.simulated import SimulatedGpu
from modeld.core.config import Config, parse_config
from modeld.core.errors import LoadFailed, ModelsBusy
from modeld.engine.engine import Engine
from modeld.engine.metrics import Metrics, serve_metrics
from modeld.testing.fakes import Behaviour, FakeRuntime
from modeld.testing.ports import free_port
from tests.support import make_config, start_over

GIB = 1024**3


@contextlib.asynccontextmanager
async def metered(config: Config) -> AsyncIterator[tuple[Engine, FakeRuntime, str]]:
    """An Engine over a fake host of `config`, with metrics served on a free port: the
    Engine, its runtime, the metrics' URL."""
    runtime = FakeRuntime()
    gpu = SimulatedGpu(config.gpu, alive=runtime.alive)
    metrics = Metrics()
    engine = await start_over(config, runtime, gpu, metrics=metrics)
    metrics.watch(engine.view.status)
    listen = f"127.0.0.1:{free_port()}"
    runner = await serve_metrics(metrics, listen)
    try:
        yield engine, runtime, f"http://{listen}/metrics"
    finally:
        await runner.cleanup()
        await engine.shutdown()


@pytest.fixture
async def host() -> AsyncIterator[tuple[Engine, FakeRuntime, str]]:
    """An Engine over a fake host with metrics served on a free port."""
    config = make_config(
        {
            "alpha": {"gpu_memory_gb": 30},
            "beta": {"gpu_memory_gb": 25},
            "gamma": {"gpu_memory_gb": 30},
        },
        [60],
    )
    async with metered(config) as served:
        yield served


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by name and sorted labels."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """One sample's value."""
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_match_status(host: tuple[Engine, FakeRuntime, str]) -> None:
    """States, GPU memory, per-model memory, switch and load histograms, evictions and
    failures all agree with what modeld says in `status`."""
    engine, runtime, url = host
    await engine.models.switch("alpha")
    await engine.models.switch("beta")
    await engine.models.switch("gamma")  # evicts alpha
    await engine.models.switch("gamma")  # already loaded
    runtime.behaviour["alpha"] = Behaviour(exit_code=1)
    with pytest.raises(LoadFailed) as caught:
        await engine.models.switch("alpha")  # evicts gamma, fails, brings gamma back
    assert caught.value.data["restored"] == ["gamma"]

    samples = await scrape(url)
    status = engine.view.status()
    for name, model in status.models.items():
        assert value(samples, "modeld_model_state", model=name, state=model.status) == 1
        for device, gb in model.gpu_memory_per_device_gb.items():
            held = value(
                samples,
                "modeld_model_gpu_memory_bytes",
                model=name,
                device=device,
                source=model.gpu_memory_source or "",
            )
            assert held == gb * GIB
    assert value(samples, "modeld_model_state", model="alpha", state="running") == 0
    card = status.gpu.devices[0]
    for kind, gb in (("total", card.total_gb), ("used", card.used_gb), ("free", card.free_gb)):
        assert value(samples, "modeld_gpu_memory_bytes", device="0", kind=kind) == pytest.approx(
            gb * GIB
        )
    assert value(samples, "modeld_switch_duration_seconds_count", outcome="success") == 3
    assert value(samples, "modeld_switch_duration_seconds_count", outcome="already_loaded") == 1
    assert value(samples, "modeld_switch_duration_seconds_count", outcome="load_failed") == 1
    assert value(samples, "modeld_load_duration_seconds_count", model="gamma") == 2
    assert value(samples, "modeld_evictions_total", model="alpha") == 1
    assert value(samples, "modeld_evictions_total", model="gamma") == 1
    assert value(samples, "modeld_failures_total", model="alpha") == 1
    assert value(samples, "modeld_operations_in_flight") == 0
    # What the running backends' /metrics said at the last poll, two polls apart.
    await engine.poll_once()
    await engine.poll_once()
    samples = await scrape(url)
    running = [n for n, m in engine.view.status().models.items() if m.status == "running"]
    for name in running:
        assert value(samples, "modeld_model_requests_in_backend", model=name) == 0
        assert value(samples, "modeld_model_requests_per_second", model=name) == 0
        assert value(samples, "modeld_model_generation_tokens_per_second", model=name) == 0
    assert ("modeld_model_requests_in_backend", (("model", "alpha"),)) not in samples


async def test_refusals_for_models_serving_requests_are_counted() -> None:
    """A switch and a stop refused because a model still serves requests past
    drain_timeout_s each count once in modeld_models_busy_total; nothing is evicted."""
    config = make_config(
        {"a": {"gpu_memory_gb": 50}, "b": {"gpu_memory_gb": 50}}, [80], drain_timeout_s=0.2
    )
    runtime = FakeRuntime()
    metrics = Metrics()
    engine = await start_over(
        config, runtime, SimulatedGpu(config.gpu, alive=runtime.alive), metrics=metrics
    )
    try:
        await engine.leases.acquire("a", owner=1)
        with pytest.raises(ModelsBusy):
            await engine.models.switch("b")
        with pytest.raises(ModelsBusy):
            await engine.models.stop("a")
        text = generate_latest(metrics.registry).decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert value(samples, "modeld_models_busy_total") == 2
        assert ("modeld_evictions_total", (("model", "a"),)) not in samples
    finally:
        await engine.shutdown()


def test_metrics_listen_is_validated() -> None:
    """A listen address without a port is a config error naming the field."""
    from modeld.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_config(
            {
                "metrics": {"listen": "localhost"},
                "models": {"a": {"runtime": "process", "command": ["x"], "endpoint": "http://x"}},
            }
        )


async def test_parks_and_wakes_are_counted() -> None:
    """A park, a wake (its duration) and a wake that fell back to a cold start each show
    in the metrics, with the parked weights' host RAM against the budget."""
    sleepy = {"gpu_memory_gb": 50, "size_gb": 40, "sleep_mode": True}
    config = make_config({"a": sleepy, "b": dict(sleepy)}, [80], park_ram_gb=100)
    runtime = FakeRuntime()
    metrics = Metrics()
    engine = await start_over(
        config, runtime, SimulatedGpu(config.gpu, alive=runtime.alive), metrics=metrics
    )
    metrics.watch(engine.view.status)
    listen = f"127.0.0.1:{free_port()}"
    runner = await serve_metrics(metrics, listen)
    try:
        runtime.behaviour["b"] = Behaviour(wake_fails=True)
        await engine.models.switch("a")
        await engine.models.switch("b")  # parks a
        await engine.models.switch("a")  # wakes a, parks b
        samples = await scrape(f"http://{listen}/metrics")
        assert value(samples, "modeld_parks_total", model="a") == 1
        assert value(samples, "modeld_parks_total", model="b") == 1
        assert value(samples, "modeld_wake_duration_seconds_count", model="a") == 1
        assert value(samples, "modeld_parked_ram_bytes", kind="used") == 40 * GIB
        await engine.models.switch("b")  # b will not wake: cold start; a parked again
        samples = await scrape(f"http://{listen}/metrics")
        assert value(samples, "modeld_wake_failures_total", model="b") == 1
        assert value(samples, "modeld_parks_total", model="a") == 2
        assert value(samples, "modeld_parked_ram_bytes", kind="budget") == 100 * GIB
    finally:
        await runner.cleanup()
        await engine.shutdown()
