"""`host:port` strings and loopback: one parser and one check, for the config, the
daemon's metrics listener and the gateway (which disagreed: `127.example.com` passed
as loopback in one, `[::1]` in only the other)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

# Names that mean this machine (besides addresses in 127.0.0.0/8 and ::1).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def split_host_port(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) as the host (without brackets) and the port;
    ValueError saying what is expected otherwise."""
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or ("[" in host or "]" in host) != bracketed
        or (":" in host and not bracketed)
    ):
        raise ValueError('must be "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"')
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name, or an address with or without IPv6 brackets) is this
    machine's loopback: only what cannot be reached from elsewhere."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def endpoint_parts(endpoint: str) -> dict[str, str | None]:
    """What `{socket}`, `{host}` and `{port}` stand for with this endpoint."""
    if endpoint.startswith("unix:"):
        return {"socket": endpoint.removeprefix("unix:"), "host": None, "port": None}
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = 443 if parts.scheme == "https" else 80
    return {"socket": None, "host": parts.hostname, "port": str(port or default)}


def fill_placeholders(command: list[object], endpoint: str) -> list[object]:
    """`command` with `{socket}`, `{host}` and `{port}` filled from `endpoint`; ValueError
    naming one it uses that the endpoint lacks (a port of a Unix socket)."""
    values = endpoint_parts(endpoint)
    filled: list[object] = []
    for arg in command:
        if isinstance(arg, str):
            for key, value in values.items():
                token = "{" + key + "}"
                if token in arg:
                    if value is None:
                        raise ValueError(
                            f"command uses {token}, which the endpoint {endpoint} lacks"
                        )
                    arg = arg.replace(token, value)
        filled.append(arg)
    return filled


def served_in(command: Sequence[object]) -> str | None:
    """The name a vLLM command serves its model by: `--served-model-name`, else
    `--model` or `vllm serve MODEL` (which vLLM then serves it as); None if it says
    neither."""
    args = [str(arg) for arg in command]
    for flag in ("--served-model-name", "--model"):
        for index, arg in enumerate(args):
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if arg == flag and index + 1 < len(args):
                return args[index + 1]
    for index, arg in enumerate(args[:-1]):
        if arg == "serve" and not args[index + 1].startswith("-"):
            return args[index + 1]
    return None
