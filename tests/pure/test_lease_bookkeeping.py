"""Leases' bookkeeping (engine/leases.py): counts on the Model, owners, protection."""

from __future__ import annotations

import pytest

from modeld.core.config import parse_config
from modeld.core.errors import UnknownLease
from modeld.engine.facts import Revision
from modeld.engine.leases import Leases
from modeld.engine.model import Model


def models() -> dict[str, Model]:
    """Two stopped Models."""
    config = parse_config(
        {
            "gpu": {"backend": "simulated", "devices_gb": [80]},
            "models": {
                name: {"runtime": "process", "command": ["x"], "endpoint": f"http://h:{port}"}
                for name, port in (("a", 1), ("b", 2))
            },
        }
    )
    revision = Revision()
    return {n: Model(c, revision, lambda _: None) for n, c in config.models.items()}


def test_leases_count_on_the_model_and_end_only_by_their_owner() -> None:
    """A grant counts on the Model (status shows it) and protects it; another connection
    cannot release it; its own can, once."""
    records = models()
    leases = Leases(records)
    lease = leases.grant(records["a"], owner=1)
    assert records["a"].usage.leases == 1 and leases.protected("a")
    assert not leases.protected("b")
    with pytest.raises(UnknownLease):
        leases.release(lease.id, owner=2)
    leases.release(lease.id, owner=1)
    assert records["a"].usage.leases == 0 and not leases.protected("a")
    with pytest.raises(UnknownLease):
        leases.release(lease.id, owner=1)


def test_a_closed_connection_ends_all_its_leases_and_only_its() -> None:
    """release_owner ends every lease of that connection, on every model."""
    records = models()
    leases = Leases(records)
    for _ in range(3):
        leases.grant(records["a"], owner=7)
    leases.grant(records["b"], owner=7)
    kept = leases.grant(records["a"], owner=8)
    assert leases.release_owner(7) == 4
    assert leases.held("a") == 1 and leases.held("b") == 0
    leases.release(kept.id, owner=8)
    assert leases.held("a") == 0


def test_waiting_acquires_protect_a_model_and_queued_ones_are_counted() -> None:
    """An acquire waiting for a model protects it from eviction; one merely queued is
    counted for status but protects nothing."""
    records = models()
    leases = Leases(records)
    with leases.queued(records["b"]):
        assert records["b"].usage.waiting == 1 and not leases.protected("b")
        with leases.waiting("b"):
            assert leases.protected("b")
    assert records["b"].usage.waiting == 0 and not leases.protected("b")


def test_a_drain_closes_the_gate_once_and_reopens_it() -> None:
    """begin_drain returns only the names it closed (so a second drainer does not reopen
    what another closed); end_drain opens them."""
    leases = Leases(models())
    assert leases.begin_drain(["a"]) == ["a"]
    assert leases.begin_drain(["a", "b"]) == ["b"]
    assert leases.draining("a") and leases.draining("b")
    leases.end_drain(["b"])
    assert leases.draining("a") and not leases.draining("b")
    leases.end_drain(["a"])
    assert not leases.draining("a")
