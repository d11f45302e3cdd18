"""What a trial's config holds, and how it becomes a `TrainConfig`.

A trial's config carries the name of its grid cell under `CELL` and the values its phase varies:
the searched hyperparameters (search) or the replicate seed (replicate, sensitivity). Everything the phase
holds fixed (each cell's constant training options, the threads per trial, whether to close with
the test metrics, whether to send artifacts back) is one `PhasePlan`, handed to the trainable once
through `tune.with_parameters`. The driver reads the same plan to log each trial's full config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gloss_core.config import TrainConfig

SEED_STRIDE = 1_000_000  # replicate training seeds of grid seed g: g * SEED_STRIDE + replicate seed


def training_seed(grid_seed: int, replicate_seed: int) -> int:
    """The training seed of replicate seed `replicate_seed` in the cells of grid seed `grid_seed`.

    Each grid seed is an independent repetition of search, selection and test (docs/statistics.md),
    so its replicates train on seeds of their own: two cells of different grid seeds that chose the
    same config never rerun the same training run. Grid seed 0 keeps the replicate seeds as they are.
    """
    return grid_seed * SEED_STRIDE + replicate_seed


CELL = "cell"  # the one bookkeeping key of a trial's config: the name of its grid cell


@dataclass(frozen=True)
class PhasePlan:
    """The constants of one phase.

    Args:
        phase: "search" or "replicate".
        cells: cell name -> the training options that phase holds fixed for the cell.
        threads: cell name -> torch threads per trial (the whole CPUs of its cell's `resources.cpu`,
            at least 1; a cell not named gets 1).
        report_test: close the trial with one report of its test metrics (replicate).
        artifacts: that closing report's checkpoint holds the test embeddings and adjacency.
        export: that closing report's checkpoint holds the best epoch's model (`model/`).
        best_weights_dir: a folder (path or URI) on the sweep's storage where each trial keeps its
            best epoch's weights, `<trial id>.safetensors`, once they are behind its latest epoch.
        grid_seeds: replicate and sensitivity phases: cell name -> its grid seed. A trial's `seed`
            is then a replicate seed, and it trains on `training_seed(grid seed, replicate seed)`.
    """

    phase: str
    cells: dict[str, dict] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)
    report_test: bool = False
    artifacts: bool = False
    export: bool = False
    best_weights_dir: str | None = None
    grid_seeds: dict[str, int] = field(default_factory=dict)

    def values(self, trial_config: dict) -> dict:
        """The flat training options of a trial: its cell's constants, then what the trial varies
        (a replicate seed becomes its grid seed's training seed)."""
        cell = trial_config[CELL]
        varied = {k: v for k, v in trial_config.items() if k != CELL}
        if "seed" in varied and cell in self.grid_seeds:
            varied["seed"] = training_seed(self.grid_seeds[cell], varied["seed"])
        return {**self.cells[cell], **varied}

    def train_config(self, trial_config: dict) -> TrainConfig:
        return TrainConfig.from_dict(self.values(trial_config))

    def best_weights_location(self, trial_id: str) -> str | None:
        return f"{self.best_weights_dir.rstrip('/')}/{trial_id}.safetensors" if self.best_weights_dir else None
