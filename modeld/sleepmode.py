"""vLLM's sleep mode over HTTP: park a backend (`POST /sleep?level=1`), wake it
(`POST /wake_up`), and ask whether it sleeps (`GET /is_sleeping`).

vLLM serves these only with VLLM_SERVER_DEV_MODE=1 and `--enable-sleep-mode`; any
other answer is a SleepModeFailed naming the endpoint and what it said, which the
Supervisor turns into a fallback (stop instead of park, cold start instead of wake).
"""

from __future__ import annotations

import json

import aiohttp

from modeld.config import ModelConfig
from modeld.errors import SleepModeFailed

# Level 1 moves the weights to host RAM and drops the KV cache: a wake restores them.
PARK_LEVEL = 1


class SleepControl:
    """Calls a backend's sleep endpoints with one shared HTTP session."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(self, method: str, endpoint: str, path: str, timeout_s: float) -> str:
        url = f"{endpoint}{path}"
        try:
            async with self._http().request(
                method, url, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                body = await response.text()
                if response.status != 200:
                    hint = " (is VLLM_SERVER_DEV_MODE=1 set?)" if response.status == 404 else ""
                    raise SleepModeFailed(
                        f"{method} {path} answered {response.status}{hint}: {body[:200]}",
                        endpoint=endpoint,
                        status=response.status,
                    )
                return body
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise SleepModeFailed(
                f"{method} {path} failed: {exc or type(exc).__name__}", endpoint=endpoint
            ) from None
        except TimeoutError:
            raise SleepModeFailed(
                f"{method} {path} did not answer within {timeout_s}s", endpoint=endpoint
            ) from None

    async def sleep(self, endpoint: str, timeout_s: float) -> None:
        """Park: weights to host RAM, KV cache dropped; returns once vLLM has done it."""
        await self._call("POST", endpoint, f"/sleep?level={PARK_LEVEL}", timeout_s)

    async def wake_up(self, endpoint: str, timeout_s: float) -> None:
        """Wake: weights back to the GPU; returns once vLLM has done it."""
        await self._call("POST", endpoint, "/wake_up", timeout_s)

    async def is_sleeping(self, endpoint: str, timeout_s: float = 5.0) -> bool:
        """Whether the backend says it sleeps (vLLM's `/health` answers 200 either way)."""
        body = await self._call("GET", endpoint, "/is_sleeping", timeout_s)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("is_sleeping"), bool):
            raise SleepModeFailed(
                f"GET /is_sleeping answered {body[:200]!r}, not {{'is_sleeping': bool}}",
                endpoint=endpoint,
            )
        return bool(answer["is_sleeping"])

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def says_asleep(control: SleepControl, model: ModelConfig) -> bool | None:
    """Whether a sleep-mode backend says it sleeps; None if it cannot say, or the model
    has no sleep mode."""
    if not model.sleep_mode:
        return None
    try:
        return await control.is_sleeping(model.endpoint)
    except SleepModeFailed:
        return None
