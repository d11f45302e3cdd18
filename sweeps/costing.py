"""What a sweep will cost, counted from its spec before anything starts (`gloss sweep plan`).

Per cell and phase: the trials (search: `num_samples` distinct configs, or every point of a
smaller finite space, as `CellSearcher` counts them; replicate: one per replicate seed;
sensitivity: one per perturbation and seed, exact where the perturbed parameters are constants of
the cell, else an upper bound, since the best config decides which perturbations fall outside
their range) and the most epochs one trial trains (search: the cell's `epochs`, at most ASHA's
`max_t`). With the seconds an epoch takes per model, the GPU-hours (trial-epochs x seconds x the
cell's GPU share) and a wall time on N GPUs: the longer of the GPU time spread over N GPUs and the
longest chain of trials a cell runs one after another (the search runs `max_concurrent` trials of a
cell at once). Both are upper bounds: every trial is counted with all its epochs, and ASHA and
early stopping only shorten trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gloss_core.errors import UserError
from sweeps.cell_groups import select_cells
from sweeps.cells import space_size
from sweeps.sensitivity import PERTURBABLE, points
from sweeps.spec import Cell, SweepSpec

PHASES = ("search", "replicate", "sensitivity")


class CostingError(UserError, ValueError):
    """A bad `--epoch-seconds` or `--gpus`; the message names the value."""


@dataclass(frozen=True)
class PhaseCells:
    """One cell in one phase: its trials, whether that count is exact, the most epochs of one
    trial, and how many of its trials run at once at most (None: no limit)."""

    cell: Cell
    trials: int
    exact: bool
    epochs: int
    concurrent: int | None


@dataclass(frozen=True)
class PhaseCost:
    """One phase's estimate: GPU-hours and wall hours on the given GPUs."""

    phase: str
    gpu_hours: float
    wall_hours: float


@dataclass(frozen=True)
class SweepPlan:
    """Every cell of every phase the spec runs."""

    spec: SweepSpec
    phases: dict[str, list[PhaseCells]]

    def trials(self, phase: str) -> int:
        return sum(row.trials for row in self.phases.get(phase, []))

    def exact(self, phase: str) -> bool:
        return all(row.exact for row in self.phases.get(phase, []))

    def max_epochs(self, phase: str) -> int:
        return max((row.epochs for row in self.phases.get(phase, []) if row.trials), default=0)

    def trial_epochs(self, phase: str) -> int:
        return sum(row.trials * row.epochs for row in self.phases.get(phase, []))


def _most(cell: Cell, key: str, default: int) -> int:
    """The largest value a cell's trials can give `key` (its constant, or the top of its space)."""
    dist = cell.space.get(key)
    if dist is None:
        return int(cell.constants.get(key, default))
    values = dist.choice or list(dist.integer or dist.uniform or dist.loguniform)
    return int(max(values))


def _acts(param: str, loss: str, protocol: str) -> bool:
    rule = PERTURBABLE[param]
    return (protocol == "integrated" and loss != "ce") if rule.losses is None else loss in rule.losses


def _sensitivity_points(spec: SweepSpec, cell: Cell) -> tuple[int, bool]:
    """A cell's perturbations: counted exactly when no perturbed parameter is searched (the best
    config holds the cell's constants there), else the steps of every parameter that acts."""
    params, loss = spec.sensitivity.params, spec.losses[cell.loss].loss
    if not set(params) & set(cell.space):
        found, _ = points(cell.name, {k: v for k, v in cell.constants.items() if k != "seed"}, loss, spec.protocol,
                          params)
        return len(found), True
    return sum(len(steps) for param, steps in params.items() if _acts(param, loss, spec.protocol)), False


def plan_sweep(spec: SweepSpec, pattern: str | None = None) -> SweepPlan:
    """The trials and epochs of each phase, of the cells `pattern` selects (`--cells`; None: all)."""
    chosen = set(select_cells([cell.name for cell in spec.cells()], pattern))
    cells = [cell for cell in spec.cells() if cell.name in chosen]
    search = []
    for cell in cells:
        size = space_size(cell.space)
        trials = spec.search.num_samples if size is None else min(spec.search.num_samples, size)
        epochs = min(_most(cell, "epochs", spec.asha.max_t), spec.asha.max_t)
        search.append(PhaseCells(cell, trials, True, epochs, spec.search.max_concurrent))
    phases = {"search": search}
    if spec.replicate is not None:
        seeds = len(spec.replicate.seeds)
        phases["replicate"] = [PhaseCells(c, seeds, True, _most(c, "epochs", spec.asha.max_t), None) for c in cells]
    if spec.sensitivity is not None:
        seeds, rows = len(spec.sensitivity_seeds()), []
        for cell in (c for c in cells if c.loss in spec.sensitivity.losses):
            count, exact = _sensitivity_points(spec, cell)
            rows.append(PhaseCells(cell, count * seeds, exact, _most(cell, "epochs", spec.asha.max_t), None))
        phases["sensitivity"] = rows
    return SweepPlan(spec, phases)


def parse_epoch_seconds(values: list[str], spec: SweepSpec) -> dict[str, float]:
    """`MODEL=SECONDS` pairs, one for every model of the spec (its name in `models`)."""
    seconds = {}
    for value in values:
        model, sep, number = value.partition("=")
        try:
            parsed = float(number)
        except ValueError:
            parsed = math.nan
        if not sep or not math.isfinite(parsed) or parsed <= 0:
            raise CostingError(f"--epoch-seconds {value!r}: give MODEL=SECONDS, SECONDS a number > 0, "
                               f"e.g. {next(iter(spec.models))}=90")
        if model not in spec.models:
            raise CostingError(f"--epoch-seconds {value!r}: {model!r} is not a model of this spec; "
                               f"models: {list(spec.models)}")
        seconds[model] = parsed
    missing = [m for m in spec.models if m not in seconds]
    if seconds and missing:
        raise CostingError(f"--epoch-seconds: no value for model(s) {missing}; give MODEL=SECONDS for each of "
                           f"{list(spec.models)}")
    return seconds


def estimate(plan: SweepPlan, epoch_seconds: dict[str, float], gpus: int) -> list[PhaseCost]:
    """Each phase's GPU-hours and wall hours on `gpus` GPUs (see the module's note)."""
    if gpus < 1:
        raise CostingError(f"--gpus {gpus}: give the number of GPUs, at least 1")
    out = []
    for phase in PHASES:
        rows = plan.phases.get(phase)
        if rows is None:
            continue
        gpu_s = sum(r.trials * r.epochs * epoch_seconds[r.cell.model] * r.cell.resources.gpu for r in rows)
        chain_s = max((math.ceil(r.trials / (r.concurrent or r.trials)) * r.epochs * epoch_seconds[r.cell.model]
                       for r in rows if r.trials), default=0.0)
        out.append(PhaseCost(phase, gpu_s / 3600, max(gpu_s / gpus, chain_s) / 3600))
    return out
