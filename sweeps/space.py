"""A search-space entry of a sweep spec and a cell's Optuna space.

Entries: `{loguniform: [lo, hi]}`, `{uniform: [lo, hi]}`, `{int: [lo, hi]}` (inclusive) or
`{choice: [a, b, ...]}`.
"""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(Strict):
    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(default=None, alias="int")
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("loguniform", "uniform", "integer", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of loguniform, uniform, int, choice")
        lo_hi = getattr(self, kinds[0])
        if kinds[0] == "choice":
            if not lo_hi:
                raise ValueError("choice needs at least one value")
        elif not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"{kinds[0].replace('integer', 'int')} needs low < high, got {list(lo_hi)}")
        elif kinds[0] == "loguniform" and lo_hi[0] <= 0:
            raise ValueError(f"loguniform needs positive bounds, got {list(lo_hi)}")
        return self

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        if self.loguniform:
            return optuna.distributions.FloatDistribution(*self.loguniform, log=True)
        if self.uniform:
            return optuna.distributions.FloatDistribution(*self.uniform)
        if self.integer:
            return optuna.distributions.IntDistribution(*self.integer)
        return optuna.distributions.CategoricalDistribution(self.choice)

    def suggest(self, trial: optuna.Trial, name: str):
        d = self.to_optuna()
        if isinstance(d, optuna.distributions.FloatDistribution):
            return trial.suggest_float(name, d.low, d.high, log=d.log)
        if isinstance(d, optuna.distributions.IntDistribution):
            return trial.suggest_int(name, d.low, d.high)
        return trial.suggest_categorical(name, d.choices)

    def lowest(self):
        """The first choice or the low bound: a value every cell is checked with before Ray starts."""
        return self.choice[0] if self.choice else (self.loguniform or self.uniform or self.integer)[0]


class SpaceSampler:
    """Optuna define-by-run space of one cell (a picklable callable: Tune saves the searcher)."""

    def __init__(self, space: dict[str, Distribution]):
        self.space = space

    def __call__(self, trial) -> None:
        for key, dist in self.space.items():
            dist.suggest(trial, key)
