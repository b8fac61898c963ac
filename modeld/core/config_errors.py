"""Config errors a person can act on: where in the file (line and column) and, for a
misspelt key, the nearest key that exists. pydantic says which field; the TOML text
says where it is; difflib says what was meant."""

from __future__ import annotations

import difflib
import re
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

# A bare or quoted key: `name`, `"gpt-oss-20b"`, `'x'`.
_KEY = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"^(\s*)({_DOTTED})\s*=")


def _parts(dotted: str) -> list[str]:
    """`models."gpt-oss-20b".env` as its keys."""
    return [key[1:-1] if key[:1] in "\"'" else key for key in re.findall(_KEY, dotted)]


def locate(text: str, loc: tuple[int | str, ...]) -> tuple[int, int] | None:
    """The line and column (from 1) of the key `loc` names, or of its nearest enclosing
    table or key when it is not written (a missing field); None if nothing matches."""
    wanted = [str(part) for part in loc]
    best: tuple[int, int, int] | None = None  # (depth matched, line, column)
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER.match(line):
            table = _parts(header.group(1))
            path, column = table, line.index("[") + 1
        elif assign := _ASSIGN.match(line):
            path, column = [*table, *_parts(assign.group(2))], len(assign.group(1)) + 1
        else:
            continue
        if path == wanted[: len(path)] and (best is None or len(path) > best[0]):
            best = (len(path), number, column)
    return None if best is None else (best[1], best[2])


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields `loc` (a table's path) holds, if any."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`X | None` (or Optional[X]) as X."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation


def suggestion(root: type[BaseModel], error: ErrorDetails) -> str | None:
    """For an unknown key, the nearest key its table takes (`did you mean size_gb?`)."""
    if error["type"] != "extra_forbidden" or not error["loc"]:
        return None
    table = _model_at(root, error["loc"][:-1])
    if table is None:
        return None
    known = [name for name in table.model_fields if not name.startswith("_")]
    close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def describe(
    root: type[BaseModel], errors: list[ErrorDetails], text: str | None
) -> list[tuple[str, str]]:
    """Each error as (field path, what to say): its line and column in `text`, pydantic's
    message, and a suggestion for a misspelt key."""
    described = []
    for error in errors:
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        where = locate(text, error["loc"]) if text is not None else None
        said = f"{path}"
        if where is not None:
            said += f" (line {where[0]}, column {where[1]})"
        said += f": {error['msg']}"
        if hint := suggestion(root, error):
            said += f"; {hint}"
        described.append((path, said))
    return described
