"""Bearer keys and who they belong to.

Two roles: admin keys (`[gateway] api_keys`, `api_keys_file`) may do everything;
inference keys (`inference_keys`, `inference_keys_file`) may run inference and read
models, status and events, with a load budget. Each entry is `KEY` or `NAME KEY`; the
name (or, unnamed, `key-` and the first 8 hex digits of the key's SHA-256) is what logs
and metrics show, never the key. The backends' own keys (`api_key_file` per model) are
sent upstream in place of the caller's.

Keys are compared as SHA-256 digests with hmac.compare_digest, against every key (no
early exit), so neither a key's content nor which key matched shows in the timing.

Key files fail closed: at start, a missing, unreadable or empty one is a configuration
error; on a reload, any of those keeps the keys already loaded, and so does a reload
that would leave no key at all where there were some.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from modeld.core.errors import ConfigError
from modeld.core.gateway_keys import Key, Role, digest


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: a key's role and name (`anonymous`, an admin, on a
    gateway without keys)."""

    role: Role
    name: str

    @property
    def admin(self) -> bool:
        """Whether it may start, stop, switch and force, and see backends' output."""
        return self.role is Role.ADMIN


ANONYMOUS = Identity(Role.ADMIN, "anonymous")
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)


def identity(request: web.Request) -> Identity | None:
    """Who sent the request (None before its key was checked, or when it was refused)."""
    return request.get(IDENTITY)


class Keys:
    """The accepted keys; empty means no key is asked for (everyone is an admin)."""

    def __init__(self, keys: list[Key]) -> None:
        self._keys = list(keys)

    @property
    def required(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self._keys)

    def inference_count(self) -> int:
        """How many inference keys there are (what waiting requests hold is shared among
        them)."""
        return sum(1 for key in self._keys if key.role is Role.INFERENCE)

    def replace(self, keys: list[Key]) -> None:
        """Take a new set of keys (SIGHUP); ConfigError, keeping the old ones, when the
        new set is empty and the old one was not: a reload never turns keys off."""
        if self._keys and not keys:
            raise ConfigError("the reloaded configuration has no key: keeping the keys loaded")
        self._keys = list(keys)

    def identify(self, header: str | None) -> Identity | None:
        """Who an Authorization header belongs to; None when it carries no accepted key
        (ANONYMOUS when no key is asked for)."""
        if not self._keys:
            return ANONYMOUS
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        hashed = digest(given.strip())
        found: Key | None = None
        for key in self._keys:
            if hmac.compare_digest(hashed, key.digest):
                found = key
        return Identity(found.role, found.name) if found is not None else None


class BackendKeys:
    """The key each backend demands (vLLM's --api-key), by model name."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)

    def replace(self, keys: Mapping[str, str]) -> None:
        """Take a new set of keys (SIGHUP re-reads the files)."""
        self._keys = dict(keys)

    def header(self, model: str) -> dict[str, str]:
        """The Authorization header for a request to `model`'s backend, if it has a key."""
        key = self._keys.get(model)
        return {"Authorization": f"Bearer {key}"} if key else {}
