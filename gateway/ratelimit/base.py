"""The limiter contract: every dimension of one request admitted atomically, or none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Dimension:
    """One limit: `quota` units per `window` seconds on `key`, charged `cost` units."""

    key: str
    name: str
    quota: int
    window: int
    cost: int = 1
    unit: str = "requests"


@dataclass(frozen=True)
class DimensionState:
    """What one dimension has left after the decision."""

    dimension: Dimension
    remaining: int
    reset_after: float


@dataclass(frozen=True)
class LimitResult:
    """The admission decision; on refusal nothing was consumed."""

    allowed: bool
    states: tuple[DimensionState, ...]
    retry_after: float = 0.0
    refused: Dimension | None = None


class Limiter(Protocol):
    """Admits a request against all its dimensions at once."""

    def acquire(self, dimensions: list[Dimension]) -> LimitResult:
        """Charge every dimension if all have room; otherwise charge nothing."""
        ...
