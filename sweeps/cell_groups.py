"""`--cells PATTERN`: run some of a sweep's cells and leave the others as they are.

Each phase of a sweep is one Tune experiment, and an experiment cannot be split or grown: its
trials are restored together. So the cells a run trains together form a *group*, whose phases are
Tune experiments of their own (`search-g2`, `replicate-g2`, ...), and the sweep's folder keeps a
ledger (`cell_groups.json`) of which cell is in which group. A cell belongs to exactly one group,
from the run that first trained it; it is never trained in another.

A run with `--cells` (a fresh run, or `--resume`):
  - continues each group that holds a selected cell (the whole group: a Tune experiment resumes
    whole), and starts one new group of the selected cells no group holds yet;
  - restores the groups that finished every phase, for the closing tables (nothing trains);
  - leaves alone every other cell: an unfinished group it does not select, and cells no run has
    started. The console lists them.
A sweep that never used `--cells` has one group, named "", whose folders are the plain phase names
(`search`, `replicate`, `sensitivity`), as a sweep folder from before groups has.

This module needs neither Ray nor MLflow (the checks before Ray use it).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field

from gloss_core.errors import UserError
from sweeps.storage import SweepStorage

LEDGER = "cell_groups.json"
PHASES = ("search", "replicate", "sensitivity")


class NoCellMatches(UserError):
    """`--cells` selects none of the spec's cells."""


@dataclass
class CellGroup:
    """Cells whose phases are the same Tune experiments.

    Args:
        name: "" for the group of a sweep started whole, else `g1`, `g2`, ... in the order they started.
        cells: the cells' names, in the spec's order.
        done: every phase of the group ended (set after the last one).
        pattern: the `--cells` pattern of the run that started it (None: all cells).
    """

    name: str
    cells: list[str]
    done: bool = False
    pattern: str | None = None

    def folder(self, phase: str) -> str:
        """The phase's Tune experiment (and best-weights folder) of this group."""
        return phase if not self.name else f"{phase}-{self.name}"

    def label(self) -> str:
        count = f"{len(self.cells)} cell{'' if len(self.cells) == 1 else 's'}"
        return "all cells" if not self.name else f"cell group {self.name} ({count})"


@dataclass
class GroupPlan:
    """What a run does with each group."""

    train: list[CellGroup]  # continued or started: they may train
    restore: list[CellGroup] = field(default_factory=list)  # finished and not selected: read for the tables
    left: list[str] = field(default_factory=list)  # cells this run leaves as they are

    def training(self) -> list[str]:
        """The cells of the groups that may train (more than `--cells` selects when a group holds
        others: a Tune experiment resumes whole)."""
        return [cell for group in self.train for cell in group.cells]


def select_cells(cells: list[str], pattern: str | None) -> list[str]:
    """The cells `pattern` selects, in the spec's order: comma-separated shell patterns (`*`, `?`,
    `[...]`) matched against cell names (`dataset__model__loss__s<seed>`); None selects all."""
    if pattern is None:
        return list(cells)
    globs = [part.strip() for part in pattern.split(",") if part.strip()]
    if not globs:
        raise NoCellMatches(f"--cells {pattern!r}: no pattern given (for example --cells 'R8__*')")
    chosen = [cell for cell in cells if any(fnmatch.fnmatchcase(cell, glob) for glob in globs)]
    if not chosen:
        shown = ", ".join(cells[:6]) + (f", ... ({len(cells)} in all)" if len(cells) > 6 else "")
        example = cells[0].split("__")[0] + "__*"
        braces = " (`{a,b}` is not a shell pattern here; give a__*,b__*)" if "{" in pattern else ""
        raise NoCellMatches(f"--cells {pattern!r} matches none of the sweep's cells ({shown}); a cell is named "
                            f"dataset__model__loss__s<seed>, for example --cells '{example}'{braces}")
    return chosen


def read_groups(storage: SweepStorage, cells: list[str]) -> list[CellGroup]:
    """The groups the sweep's folder records, their cells limited to the spec's; a folder with phase
    state but no ledger (a sweep from before groups) has one group of every cell."""
    if storage.exists(LEDGER):
        try:
            rows = json.loads(storage.file(LEDGER).read_text())["groups"]
            groups = [CellGroup(row["name"], list(row["cells"]), bool(row.get("done")), row.get("pattern"))
                      for row in rows]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{storage.uri_of(LEDGER)} cannot be read ({err}); it records which cells each earlier "
                            "run trained, so the sweep cannot resume without it (--restart starts again)") from err
    elif any(storage.exists(phase) for phase in PHASES):
        groups = [CellGroup("", list(cells))]
    else:
        groups = []
    known = set(cells)
    return [CellGroup(g.name, [c for c in g.cells if c in known], g.done, g.pattern) for g in groups]


def write_groups(storage: SweepStorage, groups: list[CellGroup]) -> None:
    """The ledger, with the cells the spec has now (`read_groups` drops others; a spec that loses a
    cell is refused on resume once a search has started, `sweeps.history`)."""
    rows = [{"name": g.name, "cells": g.cells, "done": g.done, "pattern": g.pattern} for g in groups]
    storage.file(LEDGER).write_text(json.dumps({"groups": rows}, indent=2))


def plan_groups(groups: list[CellGroup], cells: list[str], selected: list[str], pattern: str | None) -> GroupPlan:
    """Which recorded groups train, which are only restored, the new group (appended to `groups`)
    and the cells left as they are. `cells`: every cell of the spec, `selected`: those chosen."""
    chosen = set(selected)
    held = {cell for group in groups for cell in group.cells}
    train = [group for group in groups if chosen.intersection(group.cells)]
    fresh = [cell for cell in cells if cell in chosen and cell not in held]
    if fresh:
        names = {group.name for group in groups}
        if not groups and pattern is None:
            name = ""
        else:
            index = 1
            while f"g{index}" in names:
                index += 1
            name = f"g{index}"
        new = CellGroup(name, fresh, pattern=pattern)
        groups.append(new)
        train.append(new)
    restore = [group for group in groups if group not in train and group.done and group.cells]
    covered = {cell for group in train + restore for cell in group.cells}
    return GroupPlan(train, restore, [cell for cell in cells if cell not in covered])


def planned_cells(storage: SweepStorage, cells: list[str], pattern: str | None) -> list[str]:
    """The cells a run with `pattern` may train, from the folder's ledger as it is (nothing written):
    what the resources check before Ray must cover."""
    groups = read_groups(storage, cells)
    return plan_groups(groups, cells, select_cells(cells, pattern), pattern).training()


def started_phases(storage: SweepStorage, cells: list[str]) -> set[str]:
    """The phases that have Tune state in some group (a spec change to them is refused on resume)."""
    return {phase for group in read_groups(storage, cells) for phase in PHASES if storage.exists(group.folder(phase))}
