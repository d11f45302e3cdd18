"""The sensitivity phase: one-at-a-time perturbations around each cell's best config.

After search and replicate, each chosen loss variant's best config is perturbed one parameter at
a time, everything else held at the best values, and every perturbed config runs on the replicate
seeds. The replicate runs are the centre point: they are reused, never retrained, so each
perturbation pairs with the centre seed by seed (the tornado and its paired table).

A perturbation is a multiplier of the best value (`sigma`, `sigma_scale`, `lr`, `temperature`,
`margin`) or an offset added to it (`lam`, `gamma`): `sigma_scale: [0.5, 2.0]` halves and doubles
the kernel width, `lam: [-0.1, 0.1]` moves lambda by 0.1 either way. A perturbed value outside
the parameter's range (lambda and gamma in [0, 1]; the others > 0) is skipped, and the skip is
said and recorded.

Spec:
    sensitivity:
      losses: [gloss_o]                       # loss variants of the spec
      params: {sigma_scale: [0.5, 2.0], lam: [-0.1, 0.1], gamma: [-0.1, 0.1]}
      seeds: replicate                        # or a subset of the replicate seeds
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from gloss_core.config import TrainConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Perturbable:
    """How a parameter is perturbed, its valid range, and the losses it acts on (None: every loss
    but plain CE, in the integrated protocol only: lambda weighs the auxiliary loss)."""

    kind: Literal["multiplier", "offset"]
    low: float
    high: float
    losses: frozenset[str] | None
    low_inclusive: bool = False

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and value <= self.high


PERTURBABLE = {
    "sigma": Perturbable("multiplier", 0.0, math.inf, frozenset({"gloss"})),
    "sigma_scale": Perturbable("multiplier", 0.0, math.inf, frozenset({"gloss"})),
    "lr": Perturbable("multiplier", 0.0, math.inf, frozenset({"ce", "gloss", "scl", "triplet", "cosine"})),
    "temperature": Perturbable("multiplier", 0.0, math.inf, frozenset({"scl"})),
    "margin": Perturbable("multiplier", 0.0, math.inf, frozenset({"triplet"})),
    "lam": Perturbable("offset", 0.0, 1.0, None, low_inclusive=True),
    "gamma": Perturbable("offset", 0.0, 1.0, frozenset({"gloss"}), low_inclusive=True),
}


class Sensitivity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    losses: list[str]
    params: dict[str, list[float]]
    seeds: Literal["replicate"] | list[int] = "replicate"

    @field_validator("losses")
    @classmethod
    def _losses(cls, losses):
        if not losses:
            raise ValueError("give at least one loss variant")
        if len(set(losses)) != len(losses):
            raise ValueError(f"loss variants repeat: {losses}")
        return losses

    @field_validator("params")
    @classmethod
    def _params(cls, params):
        if not params:
            raise ValueError("give at least one parameter, e.g. {lam: [-0.1, 0.1]}")
        for name, steps in params.items():
            rule = PERTURBABLE.get(name)
            if rule is None:
                raise ValueError(f"{name!r} cannot be perturbed; allowed: "
                                 + ", ".join(f"{k} ({v.kind}s)" for k, v in PERTURBABLE.items()))
            if not steps:
                raise ValueError(f"{name}: give at least one {rule.kind}")
            if len(set(steps)) != len(steps):
                raise ValueError(f"{name}: values repeat: {steps}")
            for step in steps:
                if not math.isfinite(step):
                    raise ValueError(f"{name}: {step} is not a finite number")
                if rule.kind == "multiplier" and (step <= 0 or step == 1):
                    raise ValueError(f"{name}: multipliers must be > 0 and not 1, got {step}")
                if rule.kind == "offset" and (step == 0 or not -1 <= step <= 1):
                    raise ValueError(f"{name}: offsets must lie in [-1, 1] and not be 0, got {step}")
        return params


def perturbed_value(param: str, centre: float, step: float) -> float:
    rule = PERTURBABLE[param]
    value = centre * step if rule.kind == "multiplier" else centre + step
    return round(value, 12)  # 0.7 + 0.1 is 0.8, not 0.7999999999999999


@dataclass(frozen=True)
class Point:
    """One perturbed config of one cell: its name (the cell's, then `~param-low2`), the parameter,
    its direction from the centre, its value, and the cell's constants with that value."""

    name: str
    cell: str
    param: str
    direction: str  # "low" or "high" (and a number when a direction has several values)
    value: float
    step: float
    centre: float  # the best config's value of the parameter
    constants: dict


def points(cell: str, best: dict, loss: str, protocol: str, params: dict[str, list[float]]) -> tuple[list[Point], list[str]]:
    """Every valid perturbation of one cell's best config, and a note for each one skipped."""
    out, skipped = [], []
    for param, steps in params.items():
        rule = PERTURBABLE[param]
        applies = (protocol == "integrated" and loss != "ce") if rule.losses is None else loss in rule.losses
        if not applies:
            skipped.append(f"{cell}: {param} does not act on loss {loss!r} ({protocol}); not perturbed")
            continue
        centre = best.get(param, DEFAULTS.get(param))  # not set by the spec: the TrainConfig default
        if isinstance(centre, bool) or not isinstance(centre, (int, float)):
            skipped.append(f"{cell}: {param} = {centre!r} is not a number; not perturbed"
                           + (" (perturb sigma_scale to scale a heuristic sigma)" if param == "sigma" else ""))
            continue
        values = sorted((perturbed_value(param, centre, step), step) for step in steps)
        by_direction: dict[str, list[tuple[float, float]]] = {"low": [], "high": []}
        for value, step in values:
            if not rule.contains(value):
                skipped.append(f"{cell}: {param} = {centre:g} {'×' if rule.kind == 'multiplier' else '+'} {step:g} "
                               f"= {value:g} lies outside its range; skipped")
            elif value != centre:
                by_direction["low" if value < centre else "high"].append((value, step))
        for direction, found in by_direction.items():
            ordered = found if direction == "high" else found[::-1]  # low1 nearest the centre
            for i, (value, step) in enumerate(ordered, start=1):
                label = direction if len(found) == 1 else f"{direction}{i}"
                try:
                    TrainConfig.from_dict({**best, param: value})
                except ValueError as err:
                    skipped.append(f"{cell}: {param} = {value:g} is not a valid config ({err}); skipped")
                    continue
                out.append(Point(f"{cell}~{param}-{label}", cell, param, label, value, step, float(centre),
                                 {**best, param: value}))
    return out, skipped


def describe(params: dict[str, list[float]]) -> str:
    """`sigma_scale ×0.5/×2, lam -0.1/+0.1`: the perturbations in a line."""
    parts = []
    for param, steps in params.items():
        if PERTURBABLE[param].kind == "multiplier":
            parts.append(f"{param} " + "/".join(f"×{step:g}" for step in steps))
        else:
            parts.append(f"{param} " + "/".join(f"{step:+g}" for step in steps))
    return ", ".join(parts)


def tags(point: Point) -> dict[str, str]:
    """The MLflow tags a sensitivity run carries besides its cell's."""
    return {"base_cell": point.cell, "param": point.param, "direction": point.direction, "value": repr(point.value),
            "step": repr(point.step), "centre": repr(point.centre)}
