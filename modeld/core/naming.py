"""How a name nobody configured is answered, in one sentence everywhere: the closest
configured name or alias (did you mean), then the models with their aliases."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping


def _listed(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" and {items[-1]}"


def not_found(asked: str, names: Iterable[str], aliases: Mapping[str, str]) -> str:
    """ "Model 'chta' not found. Did you mean chat? The models: chat (also c), coder and
    large." (`aliases`: each alias and the model it names.)"""
    models = sorted(set(names) - set(aliases))
    also: dict[str, list[str]] = {}
    for alias, model in sorted(aliases.items()):
        also.setdefault(model, []).append(alias)
    described = [f"{m} (also {', '.join(also[m])})" if m in also else m for m in models]
    close = difflib.get_close_matches(asked, [*models, *aliases], n=1, cutoff=0.6)
    guess = f" Did you mean {close[0]}?" if close else ""
    listed = f" The models: {_listed(described)}." if described else " No model is configured."
    # The caller's name is cut: it must not make the answer (or a log line) large.
    shown = asked if len(asked) <= 64 else asked[:64] + "…"
    return f"Model '{shown}' not found.{guess}{listed}"
