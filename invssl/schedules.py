"""Loss weights that change during training, alpha(t) and beta(t) (docs/method.md, section 2).

A schedule is a small typed spec, e.g. ``{"kind": "ramp", "start": 0.0, "end": 0.5,
"until": 10}``; a bare number is a constant. ``t`` counts epochs, fractional within an epoch
when the trainer advances schedules per step, so the same spec means the same thing whatever
the batch size.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Spec(BaseModel):
    # knots(): the values a schedule passes through; every value it takes lies between them,
    # so checking the knots checks the whole curve against a range such as [0, 1].
    model_config = ConfigDict(extra="forbid", frozen=True)


class Constant(_Spec):
    kind: Literal["constant"] = "constant"
    value: float

    def __call__(self, t: float) -> float:
        return self.value

    def knots(self) -> tuple[float, ...]:
        return (self.value,)


class Ramp(_Spec):
    """Linear from ``start`` at ``t=since`` to ``end`` at ``t=until``, flat outside."""

    kind: Literal["ramp"]
    start: float
    end: float
    until: float = Field(gt=0)
    since: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Ramp:
        if self.since >= self.until:
            raise ValueError("since must be smaller than until")
        return self

    def __call__(self, t: float) -> float:
        frac = min(max((t - self.since) / (self.until - self.since), 0.0), 1.0)
        return self.start + (self.end - self.start) * frac

    def knots(self) -> tuple[float, ...]:
        return (self.start, self.end)


class Cosine(Ramp):
    """Like ``ramp`` but along half a cosine: slow at both ends."""

    kind: Literal["cosine"]  # type: ignore[assignment]

    def __call__(self, t: float) -> float:
        frac = min(max((t - self.since) / (self.until - self.since), 0.0), 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * frac))


class Step(_Spec):
    """``values[0]`` until ``at[0]``, then ``values[1]`` until ``at[1]``, and so on."""

    kind: Literal["step"]
    values: list[float] = Field(min_length=2)
    at: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Step:
        if len(self.at) != len(self.values) - 1:
            raise ValueError("step needs one more value than boundaries in 'at'")
        if any(b <= a for a, b in zip(self.at, self.at[1:])):
            raise ValueError("'at' must be increasing")
        return self

    def __call__(self, t: float) -> float:
        return self.values[sum(t >= boundary for boundary in self.at)]

    def knots(self) -> tuple[float, ...]:
        return tuple(self.values)


class Learned(_Spec):
    """A weight the trainer learns by a one-step look-ahead (docs/method.md, "Learned weights").

    ``init`` is its value at the start; ``lr`` the step size of the Adam optimiser that moves
    its logit. As a schedule it only gives the starting value: the trainer owns the rest.
    """

    kind: Literal["learned"]
    init: float = Field(default=0.5, gt=0, lt=1)  # a sigmoid never reaches 0 or 1
    lr: float = Field(default=0.01, gt=0)

    def __call__(self, t: float) -> float:
        return self.init

    def knots(self) -> tuple[float, ...]:
        return (self.init,)


ScheduleSpec = Annotated[Union[Constant, Ramp, Cosine, Step, Learned], Field(discriminator="kind")]
Schedule = Union[float, ScheduleSpec]
_adapter: TypeAdapter[ScheduleSpec] = TypeAdapter(ScheduleSpec)


def make_schedule(spec: Schedule | dict) -> Constant | Ramp | Cosine | Step | Learned:
    """Build a callable schedule ``t -> value`` from a number, a dict spec or a spec model."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(value=float(spec))
    if isinstance(spec, dict):
        return _adapter.validate_python(spec)
    if isinstance(spec, _Spec):
        return spec  # type: ignore[return-value]
    raise ValueError(f"a schedule is a number or a spec with a 'kind'; got {spec!r}")
