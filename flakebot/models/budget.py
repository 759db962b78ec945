"""Budgets: how many tokens, model calls, seconds and dollars a run may spend.

Loops that call a model check the budget before every call; the first bound reached ends the loop,
and `BudgetExceeded.bound` says which (`token_budget`, `call_budget`, `time_budget`,
`money_budget`). Money is counted from a price table per model (package data, overridable).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal, Protocol

import yaml

from flakebot.errors import BudgetExceeded
from flakebot.models.base import Usage

Bound = Literal["token_budget", "call_budget", "time_budget", "money_budget"]


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def cost(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.input_per_million
            + usage.completion_tokens * self.output_per_million
        ) / 1_000_000


def default_prices() -> dict[str, Price]:
    text = resources.files("flakebot").joinpath("data/prices.yaml").read_text()
    table = yaml.safe_load(text) or {}
    return {name: Price(float(p["input"]), float(p["output"])) for name, p in table.items()}


class RunBudget(Protocol):
    """What a model loop needs of a budget; `Budget` here, or one shared by a run's actors."""

    async def acheck(self) -> None: ...
    async def arecord(self, model: str, usage: Usage) -> None: ...


@dataclass
class Budget:
    """Limits for one run (None: no limit) and what has been spent against them."""

    max_tokens: int | None = 400_000
    max_calls: int | None = 60
    max_seconds: float | None = 3_600.0
    max_money: float | None = 2.0
    prices: dict[str, Price] = field(default_factory=default_prices)
    tokens: int = 0
    calls: int = 0
    money: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def check(self) -> None:
        """Raise BudgetExceeded if any bound is reached; call before each model call."""
        elapsed = time.monotonic() - self.started
        bounds: list[tuple[Bound, bool, str]] = [
            ("call_budget", self.max_calls is not None and self.calls >= self.max_calls,
             f"{self.calls} model calls of {self.max_calls}"),
            ("token_budget", self.max_tokens is not None and self.tokens >= self.max_tokens,
             f"{self.tokens} tokens of {self.max_tokens}"),
            ("time_budget", self.max_seconds is not None and elapsed >= self.max_seconds,
             f"{elapsed:.0f} s of {self.max_seconds:g} s" if self.max_seconds else ""),
            ("money_budget", self.max_money is not None and self.money >= self.max_money,
             f"${self.money:.4f} of ${self.max_money}"),
        ]  # fmt: skip
        for bound, reached, detail in bounds:
            if reached:
                raise BudgetExceeded(
                    bound, f"the run's {bound.replace('_', ' ')} is spent: {detail}"
                )

    async def acheck(self) -> None:
        self.check()

    async def arecord(self, model: str, usage: Usage) -> None:
        self.record(model, usage)

    def exceeded(self) -> tuple[Bound, str] | None:
        """The bound reached and why, or None; for sharing a budget through an actor."""
        try:
            self.check()
        except BudgetExceeded as exc:
            return exc.bound, exc.message  # type: ignore[return-value]
        return None

    def record(self, model: str, usage: Usage) -> None:
        self.calls += 1
        self.tokens += usage.total_tokens
        price = self.prices.get(model)
        if price is not None:
            self.money += price.cost(usage)

    def spent(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "money_usd": round(self.money, 6),
            "seconds": round(time.monotonic() - self.started, 3),
        }
