"""Bearer keys: from `[gateway] api_keys` and `api_keys_file` (one per line, `#` comments),
which callers must send; and the backends' own keys (`api_key_file` per model), which
the gateway sends upstream in their place.

Keys are compared as SHA-256 digests with hmac.compare_digest, against every key
(no early exit), so neither a key's content nor which key matched shows in the timing.
Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

from modeld.config import GatewayConfig
from modeld.errors import ConfigError

MIN_KEY_CHARS = 8


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_keys(config: GatewayConfig, source: str = "<config>") -> list[str]:
    """The configured keys; ConfigError naming the field when the file is unreadable or
    holds a key too short to be one."""
    keys = list(config.api_keys)
    if config.api_keys_file is not None:
        path: Path = config.api_keys_file
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(
                f"{source}: gateway.api_keys_file: cannot read {path}: {exc.strerror}",
                file=source,
                fields=["gateway.api_keys_file"],
            ) from None
        for number, line in enumerate(lines, 1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if len(key) < MIN_KEY_CHARS:
                raise ConfigError(
                    f"{source}: gateway.api_keys_file: line {number} of {path} is shorter "
                    f"than {MIN_KEY_CHARS} characters",
                    file=source,
                    fields=["gateway.api_keys_file"],
                )
            keys.append(key)
    return keys


class Keys:
    """The accepted keys, as digests; empty means no key is asked for."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    @property
    def required(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self._digests)

    def replace(self, keys: list[str]) -> None:
        """Take a new set of keys (SIGHUP re-reads the file)."""
        self._digests = [_digest(key) for key in keys]

    def accepts(self, header: str | None) -> bool:
        """Whether an Authorization header carries one of the keys."""
        if not self._digests:
            return True
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        digest = _digest(given.strip())
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


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
