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

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from aiohttp import web

from modeld.core.errors import ConfigError
from modeld.core.gateway_config import GatewayConfig

# A key shorter than this is refused (a line cut short in a key file, a guessable key):
# `modeld-gateway --new-key` prints a good one.
MIN_KEY_CHARS = 24
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class Role(StrEnum):
    """What a key may do."""

    ADMIN = "admin"
    INFERENCE = "inference"


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


@dataclass(frozen=True)
class Key:
    """One accepted key: its digest, role and name."""

    digest: bytes
    role: Role
    name: str


def new_key() -> str:
    """A random key: `sk-` and 43 URL-safe characters (256 bits)."""
    return "sk-" + secrets.token_urlsafe(32)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _entry(text: str, role: Role, where: str, field: str, source: str) -> Key:
    """`KEY` or `NAME KEY` as a Key; ConfigError naming `where` otherwise."""
    parts = text.split()
    name, secret = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    if len(parts) > 2 or (name is not None and not NAME.match(name)):
        raise ConfigError(
            f"{source}: gateway.{field}: {where} must be KEY or NAME KEY (a name of letters, "
            "digits, '_', '.', '-', at most 32)",
            file=source,
            fields=[f"gateway.{field}"],
        )
    if len(secret) < MIN_KEY_CHARS:
        raise ConfigError(
            f"{source}: gateway.{field}: {where} is shorter than {MIN_KEY_CHARS} characters "
            "(a line cut short?); `modeld-gateway --new-key` prints a good key",
            file=source,
            fields=[f"gateway.{field}"],
        )
    digest = _digest(secret)
    return Key(digest, role, name or f"key-{digest.hex()[:8]}")


def _from_file(path: Path, role: Role, field: str, source: str) -> list[Key]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"{source}: gateway.{field}: cannot read {path}: {reason}",
            file=source,
            fields=[f"gateway.{field}"],
        ) from None
    keys = [
        _entry(line.strip(), role, f"line {number} of {path}", field, source)
        for number, line in enumerate(lines, 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not keys:
        # An emptied file must not turn authentication off.
        raise ConfigError(
            f"{source}: gateway.{field}: {path} holds no key",
            file=source,
            fields=[f"gateway.{field}"],
        )
    return keys


def read_keys(config: GatewayConfig, source: str = "<config>") -> list[Key]:
    """Every configured key with its role; ConfigError naming the field when a file is
    missing, unreadable or empty, an entry is malformed, or a key has two roles."""
    keys: list[Key] = []
    for role, inline, file, field in (
        (Role.ADMIN, config.api_keys, config.api_keys_file, "api_keys"),
        (Role.INFERENCE, config.inference_keys, config.inference_keys_file, "inference_keys"),
    ):
        for index, text in enumerate(inline):
            keys.append(_entry(text, role, f"entry {index}", field, source))
        if file is not None:
            keys.extend(_from_file(file, role, f"{field}_file", source))
    roles: dict[bytes, Role] = {}
    for key in keys:
        if roles.setdefault(key.digest, key.role) is not key.role:
            raise ConfigError(
                f"{source}: gateway: the key named {key.name} is both an admin and an "
                "inference key",
                file=source,
                fields=["gateway.inference_keys"],
            )
    return keys


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
        digest = _digest(given.strip())
        found: Key | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
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
