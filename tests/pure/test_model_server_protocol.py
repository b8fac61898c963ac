"""The GIE model-server families from a status, as the LoRA-affinity scorer counts
them: each model in one list, capacity in names."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modeld.gateway.protocol import ModelServerMetrics
from modeld.wire.status import Status
from tests.support.wire import model_status, whole_status


def status(**models: dict[str, Any]) -> Status:
    """A status with one 80 GB GPU and 30 GB models (two fit at once)."""
    return whole_status(
        {name: model_status(gpu_memory_required_gb=30, **model) for name, model in models.items()}
    )


def scrape(metrics: ModelServerMetrics, seen: Status) -> dict[str, Any]:
    """The samples of one exposition, by name (the info gauge's labels under `info`)."""
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(metrics.exposition(seen).decode()):
        for sample in family.samples:
            found[sample.name] = sample.value
            if sample.name == "vllm:lora_requests_info":
                found["info"] = sample.labels
    return found


def test_a_resident_model_with_requests_queued_is_listed_once() -> None:
    """Requests waiting their turn on a running model count as waiting requests, but the
    model stays only in running_lora_adapters: the scorer would count it twice."""
    found = scrape(
        ModelServerMetrics(),
        status(a={"status": "running", "waiting": 3, "aliases": ["chat"]}, b={}),
    )
    assert found["info"]["running_lora_adapters"] == "a,chat"
    assert found["info"]["waiting_lora_adapters"] == ""
    assert found["vllm:num_requests_waiting"] == 3
    assert found["info"]["max_lora"] == "3"  # two names listed, room for one more model


def test_capacity_is_names_listed_plus_models_that_still_fit() -> None:
    """Nothing held: two models fit. One resident with two aliases and one loading:
    no room left, whatever the number of names (max_lora equals the names listed)."""
    metrics = ModelServerMetrics()
    assert scrape(metrics, status(a={}, b={}, c={}))["info"]["max_lora"] == "2"
    held = status(a={"status": "running", "aliases": ["x", "y"]}, b={"status": "loading"}, c={})
    info = scrape(metrics, held)["info"]
    assert info["waiting_lora_adapters"] == "b"
    assert info["max_lora"] == "4"  # a, x, y, b: full


def test_adapters_are_listed_as_running_and_capacity_counts_free_slots() -> None:
    """A resident base with two adapter slots and one adapter loaded: the adapter is a
    running name; room is one more model (two fit, one held) and one more adapter; an
    adapter needs no memory of its own, so it does not make more models fit."""
    metrics = ModelServerMetrics()
    big = {"gpu_memory_required_gb": 30}
    seen = whole_status(
        {
            "base": model_status(
                status="running", adapters=["sql", "chat"], adapter_slots=2, **big
            ),
            "sql": model_status(status="running", base="base", gpu_memory_required_gb=0),
            "chat": model_status(base="base", gpu_memory_required_gb=0),
            "other": model_status(**big),
        }
    )
    info = scrape(metrics, seen)["info"]
    assert info["running_lora_adapters"] == "base,sql"
    assert info["max_lora"] == "4"  # base, sql; one model; one adapter slot
