"""A phase's outcome recorded in MLflow, after the phase: each cell's parent run gets its Optuna
counts and best config (search), its test mean ± std and registered model (replicate), or its
perturbation points (sensitivity); the sweep's summary run gets the summary files."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gloss_core.spread import mean_std
from sweeps.outcomes import TEST_KEYS, ReplicateOutcome, SearchOutcome, SensitivityOutcome
from sweeps.registering import register_best
from sweeps.spec import SweepSpec


class PhaseRecorder:
    def __init__(self, client, exp_id: str, spec: SweepSpec):
        self.client, self.exp_id, self.spec = client, exp_id, spec

    def search(self, parents: dict[str, str], search: SearchOutcome) -> None:
        for name, parent in parents.items():
            for state, count in search.optuna.get(name, {}).items():
                self.client.log_metric(parent, f"optuna_{state.lower()}", count)
            for what, count in search.repeats.get(name, {}).items():
                self.client.log_metric(parent, f"search_{what}", count)
            best = search.best.get(name)
            if best is None:
                self.client.set_tag(parent, "error", "no trial of this cell has a score (every one failed or "
                                                     f"none reported {self.spec.metric})")
                self.client.set_terminated(parent, "FAILED")
                continue
            self.client.log_metric(parent, f"best_{self.spec.metric}", best.value)
            self.client.log_dict(parent, best.config, "best_config.json")
            self.client.set_terminated(parent, "FINISHED")

    def replicate(self, parents: dict[str, str], replicate: ReplicateOutcome) -> None:
        spec = self.spec
        for name, parent in parents.items():
            rows = replicate.finals.get(name, [])
            spreads = {key: mean_std(row.test(key) for row in rows if row.test(key) is not None) for key in TEST_KEYS}
            for key, spread in spreads.items():
                if spread.n:
                    self.client.log_metric(parent, f"{key}_mean", spread.mean)
                    self.client.log_metric(parent, f"{key}_std", 0.0 if spread.n == 1 else spread.std)
            if rows and spec.replicate.export:
                register_best(self.client, self.exp_id, spec.name, name, spec.metric, spec.mode, rows, spreads)
            self.client.set_terminated(parent, "FINISHED" if rows else "FAILED")

    def sensitivity(self, parents: dict[str, str], outcome: SensitivityOutcome) -> None:
        """Per cell: its points (param, direction, value) and the skipped perturbations with reasons."""
        for name, parent in parents.items():
            mine = [dataclasses.asdict(p) | {"constants": None, "seeds_finished": len(outcome.finals.get(p.name, []))}
                    for p in outcome.points if p.cell == name]
            self.client.log_dict(parent, {"points": mine, "skipped": outcome.skipped.get(name, [])},
                                 "sensitivity_points.json")
            complete = all(p["seeds_finished"] for p in mine)
            self.client.set_terminated(parent, "FINISHED" if mine and complete else "FAILED")

    def summary(self, run_id: str, content: dict, tables: list[Table]) -> None:
        """`summary.json` and `summary.txt` (the console's tables) on the summary run, which ends."""
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "summary.json").write_text(json.dumps(content, indent=2, default=str))
            with open(Path(folder, "summary.txt"), "w") as f:
                for table in tables:
                    Console(file=f, width=160).print(table)
            self.client.log_artifacts(run_id, folder)
        self.client.set_terminated(run_id, "FINISHED")
