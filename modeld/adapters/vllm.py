"""The one vLLM HTTP client: health, sleep mode, LoRA adapters at run time and request
metrics, over one session.

Every read is bounded (a backend is not trusted to send a sane body) and every call has
a deadline. Health is a verdict, never an exception; the sleep calls raise
SleepModeFailed naming the endpoint and what it said, which the Engine turns into a
fallback (stop instead of park, cold start instead of wake); metrics that cannot be
read are None. The adapter calls raise AdapterFailed with vLLM's reason.

vLLM serves the sleep endpoints only with VLLM_SERVER_DEV_MODE=1 and
`--enable-sleep-mode` (docs/threat-model.md says why that must stay on loopback).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from enum import StrEnum

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError

from modeld.core.activity import Activity, parse_activity
from modeld.core.config import ModelConfig
from modeld.core.errors import AdapterFailed, ModeldError, ProbeFailed, SleepModeFailed

# Level 1 moves the weights to host RAM and drops the KV cache: a wake restores them.
PARK_LEVEL = 1
# The most modeld reads of an answer: sleep-mode answers are a few bytes, /metrics a few
# tens of kilobytes even with many label sets.
MAX_ANSWER_BYTES = 64 * 1024
MAX_METRICS_BYTES = 4 * 1024 * 1024
# What a probe asks: a greedy token (or an embedding) of a fixed prompt, so the answer
# of a model that answers right is the same each time (the wake canary compares them).
PROBE_PROMPT = "The capital of France is"
# `/v1/models` lists the base and every adapter loaded in it (a few hundred bytes each).
MAX_MODELS_BYTES = 1024 * 1024


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


class _TooLong(Exception):
    """An answer longer than modeld will read."""


async def _read(response: aiohttp.ClientResponse, limit: int) -> str:
    body = await response.content.read(limit + 1)
    if len(body) > limit:
        raise _TooLong(f"answer longer than {limit} bytes")
    return body.decode(errors="replace")


class VllmClient:
    """Talks to vLLM backends: `/health`, `/sleep`, `/wake_up`, `/is_sleeping`,
    `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`, `/v1/models`, `/metrics`. One
    aiohttp session for every backend on TCP, and one for each backend on a Unix socket
    (`unix:/path.sock`: aiohttp binds a Unix connector to one path)."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._unix: dict[str, aiohttp.ClientSession] = {}

    def _url(self, endpoint: str, path: str) -> tuple[aiohttp.ClientSession, str]:
        """The session that reaches `endpoint`, and the URL of `path` there."""
        if endpoint.startswith("unix:"):
            socket = endpoint.removeprefix("unix:")
            session = self._unix.get(socket)
            if session is None:
                session = aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=socket), timeout=self._timeout
                )
                self._unix[socket] = session
            return session, f"http://localhost{path}"
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session, f"{endpoint}{path}"

    async def health(self, endpoint: str) -> Health:
        """Probe once: 200 healthy, 503 engine dead, refused unreachable, else unhealthy."""
        session, url = self._url(endpoint, "/health")
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return Health.HEALTHY
                if response.status == 503:
                    return Health.DEAD
                return Health.UNHEALTHY
        except (aiohttp.ClientConnectionError, ConnectionError):
            return Health.UNREACHABLE
        except TimeoutError:
            return Health.UNHEALTHY

    async def activity(self, endpoint: str) -> Activity | None:
        """One reading of `/metrics`, or None if it cannot be read or lacks vLLM's."""
        session, url = self._url(endpoint, "/metrics")
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return None
                text = await _read(response, MAX_METRICS_BYTES)
        except (aiohttp.ClientError, ConnectionError, TimeoutError, _TooLong):
            return None
        try:
            parsed = parse_activity(text)
        except ValueError:
            return None
        return None if parsed is None else replace(parsed, at=time.monotonic())

    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        timeout_s: float,
        *,
        body: dict[str, str] | None = None,
        failed: type[ModeldError] = SleepModeFailed,
        limit: int = MAX_ANSWER_BYTES,
    ) -> str:
        """One call to a backend's endpoint; its answer's text, or `failed` saying why."""
        session, url = self._url(endpoint, path)
        try:
            async with session.request(
                method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                text = await _read(response, limit)
                if response.status != 200:
                    # What the backend said goes in `answer` (for admins), not the message.
                    raise failed(
                        f"{method} {path} answered {response.status}"
                        f"{_why(response.status, text, failed)}",
                        endpoint=endpoint,
                        status=response.status,
                        answer=text[:200],
                    )
                return text
        except (aiohttp.ClientError, ConnectionError, _TooLong) as exc:
            raise failed(
                f"{method} {path} failed: {exc or type(exc).__name__}", endpoint=endpoint
            ) from None
        except TimeoutError:
            raise failed(
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
                "GET /is_sleeping did not answer {'is_sleeping': bool}",
                endpoint=endpoint,
                answer=body[:200],
            )
        return bool(answer["is_sleeping"])

    async def says_asleep(self, model: ModelConfig) -> bool | None:
        """Whether a sleep-mode backend says it sleeps; None if it cannot say, or the
        model has no sleep mode."""
        if not model.sleep_mode:
            return None
        try:
            return await self.is_sleeping(model.endpoint)
        except SleepModeFailed:
            return None

    async def probe(self, model: ModelConfig, timeout_s: float, key: str | None = None) -> str:
        """The model's answer to its probe: the token of a greedy one-token completion
        (`probe = "token"`), or the first numbers of a one-input embedding
        (`"embedding"`); ProbeFailed saying what came back, or that nothing did within
        `timeout_s` (a hung engine answers /health 200 and never a token)."""
        embedding = model.probe == "embedding"
        path = "/v1/embeddings" if embedding else "/v1/completions"
        body: dict[str, object] = {"model": model.served_name, "input": PROBE_PROMPT}
        if not embedding:
            body = {
                "model": model.served_name,
                "prompt": PROBE_PROMPT,
                "max_tokens": 1,
                "temperature": 0,
            }
        session, url = self._url(model.endpoint, path)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        try:
            async with session.post(
                url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                text = await _read(response, MAX_ANSWER_BYTES)
        except TimeoutError:
            raise ProbeFailed(
                f"no {'embedding' if embedding else 'token'} in {timeout_s:g} s",
                endpoint=model.endpoint,
            ) from None
        except (aiohttp.ClientError, ConnectionError, _TooLong) as exc:
            raise ProbeFailed(
                f"POST {path} failed: {exc or type(exc).__name__}", endpoint=model.endpoint
            ) from None
        if response.status != 200:
            reason = _vllm_error(text)
            raise ProbeFailed(
                f"POST {path} answered {response.status}" + (f": {reason[:200]}" if reason else ""),
                endpoint=model.endpoint,
                status=response.status,
            )
        try:
            answered = _PROBED.validate_json(text)
        except ValidationError:
            raise ProbeFailed(
                f"POST {path} answered 200 without a {'vector' if embedding else 'choice'}",
                endpoint=model.endpoint,
                answer=text[:200],
            ) from None
        if embedding:
            if not answered.data or not answered.data[0].embedding:
                raise ProbeFailed(
                    f"POST {path} answered an empty embedding", endpoint=model.endpoint
                )
            return " ".join(f"{x:.4g}" for x in answered.data[0].embedding[:4])
        if not answered.choices:
            raise ProbeFailed(f"POST {path} answered no choice", endpoint=model.endpoint)
        return answered.choices[0].text

    async def load_adapter(self, endpoint: str, name: str, path: str, timeout_s: float) -> None:
        """Load a LoRA adapter into a running base, served as `name` (vLLM reads it from
        `path` before answering); AdapterFailed with vLLM's reason."""
        body = {"lora_name": name, "lora_path": path}
        await self._call(
            "POST", endpoint, "/v1/load_lora_adapter", timeout_s, body=body, failed=AdapterFailed
        )

    async def unload_adapter(self, endpoint: str, name: str, timeout_s: float) -> bool:
        """Unload adapter `name` from a base: True once unloaded, False if the base did
        not have it (vLLM's 404); AdapterFailed otherwise."""
        try:
            await self._call(
                "POST",
                endpoint,
                "/v1/unload_lora_adapter",
                timeout_s,
                body={"lora_name": name},
                failed=AdapterFailed,
            )
        except AdapterFailed as exc:
            if exc.data.get("status") == 404 and _vllm_error(exc.data.get("answer", "")):
                return False
            raise
        return True

    async def adapters(self, endpoint: str, timeout_s: float = 5.0) -> dict[str, str]:
        """The adapters a base serves (`/v1/models` entries with a `parent`): name to the
        path it was loaded from; AdapterFailed if the answer cannot be read."""
        text = await self._call(
            "GET", endpoint, "/v1/models", timeout_s, failed=AdapterFailed, limit=MAX_MODELS_BYTES
        )
        try:
            listed = _MODELS.validate_json(text)
        except ValidationError:
            raise AdapterFailed(
                "GET /v1/models did not answer a model list", endpoint=endpoint, answer=text[:200]
            ) from None
        return {m.id: m.root or "" for m in listed.data if m.parent is not None}

    async def close(self) -> None:
        """Close the HTTP session."""
        sessions = [*self._unix.values(), *([self._session] if self._session else [])]
        self._session, self._unix = None, {}
        for session in sessions:
            await session.close()


class _Choice(BaseModel):
    text: str = ""


class _Vector(BaseModel):
    embedding: list[float] = []


class _Probed(BaseModel):
    """A completion's or an embedding's answer (only what a probe reads)."""

    choices: list[_Choice] = []
    data: list[_Vector] = []


_PROBED = TypeAdapter(_Probed)


class _Card(BaseModel):
    """One entry of vLLM's `/v1/models` (only what modeld reads)."""

    id: str
    root: str | None = None
    parent: str | None = None


class _ModelList(BaseModel):
    data: list[_Card]


_MODELS = TypeAdapter(_ModelList)


def _vllm_error(text: str) -> str | None:
    """The message of vLLM's error body (`{"error": {"message": ...}}`), if it is one."""
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


def _why(status: int, text: str, failed: type[ModeldError]) -> str:
    """What a refusal's message adds: vLLM's own reason for an adapter, or which setting
    a missing endpoint (a 404 that is not vLLM's error) wants."""
    if failed is AdapterFailed and (reason := _vllm_error(text)) is not None:
        return f": {reason[:300]}"
    if status != 404:
        return ""
    if failed is AdapterFailed:
        return " (is VLLM_ALLOW_RUNTIME_LORA_UPDATING=True set, and --enable-lora given?)"
    return " (is VLLM_SERVER_DEV_MODE=1 set?)"
