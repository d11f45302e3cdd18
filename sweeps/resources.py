"""What each trial holds: its cell's resources (`Cell.resources`: the spec's, then the dataset
entry's, then the model entry's), for `tune.with_resources`, which asks per trial; and the distinct
needs of a sweep's cells, for the preflight check that some node holds each."""

from __future__ import annotations

from sweeps.spec import Cell, Resources
from trainables.plan import CELL


class CellResources:
    """`tune.with_resources`'s per-trial callable: a trial's config (its cell's name under `CELL`)
    to the CPUs and GPUs one trial of that cell holds. Picklable (Tune ships it with the trainable)."""

    def __init__(self, cells: dict[str, Cell]):
        self.needs = {name: (cell.resources.cpu, cell.resources.gpu) for name, cell in cells.items()}

    def __call__(self, config: dict) -> dict[str, float]:
        cpu, gpu = self.needs[config[CELL]]
        return {"cpu": cpu, "gpu": gpu}


def distinct_needs(cells) -> list[Resources]:
    """Each distinct (cpu, gpu) a trial of some cell asks for, largest GPU share first."""
    seen = {(cell.resources.cpu, cell.resources.gpu) for cell in cells}
    return [Resources(cpu=cpu, gpu=gpu) for cpu, gpu in sorted(seen, key=lambda need: (-need[1], -need[0]))]
