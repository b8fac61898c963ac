"""The health probe: vLLM's `/health` over HTTP."""

from __future__ import annotations

from enum import StrEnum

import aiohttp


class Health(StrEnum):
    """What `/health` said. The names are the seed's (`healthy`) plus why not."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    # Connection refused or reset: vLLM keeps its port closed while it loads.
    UNREACHABLE = "unreachable"
    # 503: vLLM's engine died; the API server will exit soon.
    DEAD = "engine_dead"
    # Any other answer, or no answer in time.
    UNHEALTHY = "unhealthy"


class HealthProbe:
    """GETs `<endpoint>/health` with one shared HTTP session."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def check(self, endpoint: str) -> Health:
        """Probe once: 200 healthy, 503 engine dead, refused unreachable, else unhealthy."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{endpoint}/health") as response:
                if response.status == 200:
                    return Health.HEALTHY
                if response.status == 503:
                    return Health.DEAD
                return Health.UNHEALTHY
        except (aiohttp.ClientConnectionError, ConnectionError):
            return Health.UNREACHABLE
        except TimeoutError:
            return Health.UNHEALTHY

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
