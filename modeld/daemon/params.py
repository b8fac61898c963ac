"""The params of each API method (methods.py's table): exactly these fields, of exactly
these types; anything else is `invalid_params`, naming the field."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    """A method's params: exactly these fields, of exactly these types."""

    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(Params):
    """Methods that take no parameters."""


class ModelParams(Params):
    """`stop`: a model name."""

    model: str = Field(min_length=1)


class DeviceParams(Params):
    """`gpu_reset_health`: a device's index."""

    device: int = Field(ge=0, le=1023)


class LeaseUpdateParams(Params):
    """`lease_update`: a standing lease's requests in flight now, those served since the
    last update, and the body sizes of those its backend cut off."""

    lease: str = Field(min_length=1, max_length=100)
    in_flight: int = Field(ge=0, le=1_000_000)
    served: int = Field(default=0, ge=0, le=1_000_000)
    cut_bytes: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=64)


class LogsParams(ModelParams):
    """`logs`: a model, how many of its last lines, and whether to follow new ones."""

    lines: int = Field(default=50, ge=1, le=10_000)
    follow: bool = False


class LoadParams(ModelParams):
    """`switch`, `start`, `restart`: a model, whether to wait for health, and for how long."""

    wait: bool = True
    timeout: float | None = Field(default=None, gt=0)


class SwitchParams(LoadParams):
    """`switch`: also `force`, to evict models serving requests without draining them."""

    force: bool = False


class HistoryParams(Params):
    """`history`: of one model (default: all), the latest `limit` entries."""

    model: str | None = Field(default=None, min_length=1)
    limit: int = Field(default=50, ge=1, le=500)


class PlanParams(ModelParams):
    """`plan`: a model, and `force` (plan as a forced switch would: no drain)."""

    force: bool = False


class StopParams(ModelParams):
    """`stop`: a model, and `force` to stop it under its requests in flight."""

    force: bool = False


class AcquireParams(ModelParams):
    """`acquire`: a model, and how long to wait for it to run (default: no limit)."""

    timeout_s: float | None = Field(default=None, gt=0)
    # False: lease only a model that runs or is loading; one that would need a load or a
    # wake is refused at once (`would_load`), so a router can budget the loads it causes.
    load: bool = True
    # The request's body size (a router's): named in a crash loop's reason.
    request_bytes: int | None = Field(default=None, ge=0)
    # A standing lease: its holder's requests for the model share it, and it says how
    # many are in flight with `lease_update` (docs/gateway.md: lease batching).
    standing: bool = False


class ReleaseParams(Params):
    """`release`: a lease this connection holds."""

    lease: str = Field(min_length=1, max_length=100)
    # Its request was cut off by its backend (it broke off, refused the connection, or
    # its model failed): a crash loop counts it (docs/probes.md).
    broken: bool = False
