"""The gateway's keys as its configuration gives them: inline, or in files one per line
(`KEY` or `NAME KEY`), each with its role. Read here, below the gateway, so that
`modeld check-config` reads them exactly as `modeld-gateway` will.

Key files fail closed: a missing, unreadable or empty one, a malformed line, or a key
shorter than MIN_KEY_CHARS (a line cut short) is a configuration error naming it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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
class Key:
    """One accepted key: its digest, role and name."""

    digest: bytes
    role: Role
    name: str


def new_key() -> str:
    """A random key: `sk-` and 43 URL-safe characters (256 bits)."""
    return "sk-" + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    """A key's SHA-256, as keys are compared."""
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
    hashed = digest(secret)
    return Key(hashed, role, name or f"key-{hashed.hex()[:8]}")


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
