"""What every table of the configuration shares: strict models (an unknown key is an
error) and the value types the tables use."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from modeld.core.addresses import split_host_port

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def host_port(value: str) -> str:
    """A "host:port" value, checked (ValueError saying what is expected)."""
    split_host_port(value)
    return value
