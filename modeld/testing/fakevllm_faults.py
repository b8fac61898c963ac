"""Failure modes of the fake vLLM that real engines show (issue 34): dying on a prompt
over N tokens (vLLM issue 52871: an oversized prompt kills the engine mid-request, and
the API server exits), and waking from sleep wrong (answering, but not what it answered
before it slept, as adapters corrupted by a wake have)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

# What a model that woke wrong answers instead of its own first token.
WRONG = " garbled"


@dataclass
class Faults:
    """The faults a fake vLLM has; all off by default."""

    # A prompt of more words (its fake tokens) than this kills the engine.
    die_over_tokens: int | None = None
    # Each wake from sleep leaves it answering wrong until it is started afresh.
    wakes_wrong: bool = False
    answers_wrong: bool = False
    # Set when the engine died (the fake runtime then ends the backend, exit code 1).
    died: asyncio.Event = field(default_factory=asyncio.Event)

    def kills(self, request: web.Request, body: dict[str, object]) -> bool:
        """Whether this request kills the engine: then its connection is dropped and
        the backend dies."""
        limit = self.die_over_tokens
        if limit is None or prompt_tokens(body) <= limit:
            return False
        self.died.set()
        if request.transport is not None:
            request.transport.abort()
        return True

    def woke(self) -> None:
        """A wake from sleep happened."""
        if self.wakes_wrong:
            self.answers_wrong = True

    def first_token(self, right: str) -> str:
        """The first token of an answer: `right`, or what a model that woke wrong says."""
        return WRONG if self.answers_wrong else right


def prompt_tokens(body: dict[str, object]) -> int:
    """The fake's token count of a request's prompt: its words (a completion's prompt, or
    every chat message's text content)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt.split())
    messages = body.get("messages")
    words = 0
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            words += len(content.split()) if isinstance(content, str) else 0
    return words
