"""One host:port parser and one loopback check for the config, the metrics listener and
the gateway."""

from __future__ import annotations

import pytest

from modeld.core.addresses import is_loopback, split_host_port


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:1", ("localhost", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("gpu7.example.internal:443", ("gpu7.example.internal", 443)),
    ],
)
def test_host_port_splits(value: str, expected: tuple[str, int]) -> None:
    """host:port, IPv6 in brackets, as host and port."""
    assert split_host_port(value) == expected


@pytest.mark.parametrize(
    "value", ["8080", ":8080", "localhost:", "localhost:0", "h:65536", "h:x", "::1:8080", "[::1:80"]
)
def test_malformed_host_port_is_refused(value: str) -> None:
    """No port, port out of range, unbracketed IPv6, unbalanced brackets: ValueError."""
    with pytest.raises(ValueError, match="host:port"):
        split_host_port(value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("::", False),
        # A DNS name that merely starts like a loopback address is anywhere at all.
        ("127.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_is_only_this_machine(host: str, loopback: bool) -> None:
    """Loopback addresses and names are; names that look like them are not."""
    assert is_loopback(host) is loopback
