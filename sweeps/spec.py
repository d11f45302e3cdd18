"""Sweep specs: YAML, validated against a schema before any Ray resource is used.

A spec names the grid axes (`datasets`, `models`, `losses`, `seeds`), each loss variant's search
space, the per-cell budget, ASHA, the metric, trial resources, the replicate phase, the optional
sensitivity phase (`sweeps/sensitivity.py`) and where results go. Errors name the key and what
is allowed. See `sweeps/specs/demo.yaml`.

A dataset or model entry holds its own training options and, under `resources`, what its trials
hold. A cell's options: `train` < the dataset entry < the model entry < the loss variant's
`loss` and `fixed` < the grid's seed and the spec's metric (then a trial's searched values); its
resources: `resources` < the dataset entry's < the model entry's, key by key.

Search-space entries: `{loguniform: [lo, hi]}`, `{uniform: [lo, hi]}`, `{int: [lo, hi]}`
(inclusive) or `{choice: [a, b, ...]}`; anything in `fixed` is a constant.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gloss_core.config import TrainConfig
from gloss_core.errors import UserError
from gloss_core.losses.registry import PROTOCOL_LOSSES
from gloss_core.report import SELECTION_METRICS
from sweeps.sensitivity import PERTURBABLE, Sensitivity
from sweeps.space import Distribution, SpaceSampler, Strict  # noqa: F401 - SpaceSampler: part of the spec's API
from sweeps.yaml_strict import MAX_SPEC_BYTES, SpecYAMLError, load_yaml, short
from trainables.plan import SEED_STRIDE

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# set by the grid (and the spec's metric and mode), not by overrides
GRID_KEYS = {"data", "model", "loss", "seed", "protocol", "selection_metric", "selection_mode"}
DEFAULT_METRIC = {protocol: metrics[0] for protocol, metrics in SELECTION_METRICS.items()}
SWEEP_CHECKPOINT_BUDGET = 0.05  # a trial spends at most 5% of its time on checkpoints (train: overrides)


MAX_NAME = 100  # characters of a sweep's name
MAX_TRIALS = 50_000  # trials of one phase: the runner reads a phase's runs back in one query of this size


class SpecError(UserError, ValueError):
    """An invalid sweep spec; the message names the file, key and what is allowed."""


CELL_JOIN = "__"  # joins a cell's dataset, model, loss variant and seed into its name


def _no_join(names, field: str) -> None:
    """A name holding the join of cell names could make two cells one name (`A__B` + `C` and `A` +
    `B__C`): refused."""
    for name in names:
        if CELL_JOIN in str(name):
            raise ValueError(f"{field}.{name}: a name may not hold {CELL_JOIN!r}, which joins a cell's dataset, "
                             f"model and loss variant into its name (two cells could get one name); "
                             f"rename it, e.g. {str(name).replace(CELL_JOIN, '_')!r}")


def _check_overrides(values: dict, where: str) -> dict:
    unknown = sorted(set(values) - TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown} in {where}; allowed: {sorted(TRAIN_FIELDS)}")
    return values


class LossVariant(Strict):
    loss: str
    space: dict[str, Distribution] = {}
    fixed: dict[str, Any] = {}

    @field_validator("space", "fixed")
    @classmethod
    def _known(cls, values):
        return _check_overrides(values, "the loss variant")


class Search(Strict):
    num_samples: int = Field(4, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0


class Asha(Strict):
    max_t: int = Field(3, ge=1, description="epochs")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)

    @model_validator(mode="after")
    def _grace_within_max_t(self):
        if self.grace_period > self.max_t:
            raise ValueError(f"asha.grace_period {self.grace_period} is more than asha.max_t {self.max_t}: no trial "
                             "would train long enough to reach its first rung")
        return self


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu):
        if gpu > 1 and gpu != int(gpu):
            raise ValueError(f"a trial holds a fraction of one GPU or whole GPUs, not {gpu:g}")
        return gpu


RESOURCES = "resources"  # the one key of a dataset or model entry that is not a training option


def _entry_resources(value, where: str) -> dict[str, float]:
    """A dataset's or model's own `resources`: the keys it sets (each overrides the spec's)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: give a mapping such as {{gpu: 1}}, got {short(value)}")
    try:
        parsed = Resources.model_validate(value)
    except ValidationError as err:
        raise ValueError("; ".join(f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                   + (f" (got {short(e['input'])})" if e["type"] != "extra_forbidden" else "")
                                   for e in err.errors())) from None
    return {key: getattr(parsed, key) for key in sorted(parsed.model_fields_set)}


def _unique_seeds(seeds: list[int]) -> list[int]:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds repeat: {repeated}; each seed runs once, so give each once")
    outside = [s for s in seeds if not 0 <= s < SEED_STRIDE]
    if outside:
        raise ValueError(f"seeds {outside} are outside [0, {SEED_STRIDE:,}); each grid seed's replicates train on "
                         f"grid seed x {SEED_STRIDE:,} + replicate seed")
    return seeds


class Replicate(Strict):
    seeds: list[int] = [1, 2, 3]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds):
        if not seeds:
            raise ValueError("give at least one replicate seed")
        return _unique_seeds(seeds)

    artifacts: bool = False  # log test embeddings and one batch's adjacency per epoch (t-SNE, heatmap)
    export: bool = True  # each trial's best-epoch model to MLflow; each cell's best (on validation) registered


class SweepSpec(Strict):
    name: str
    protocol: Literal["integrated", "standalone"] = "integrated"
    datasets: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Any]]
    losses: dict[str, LossVariant]
    seeds: list[int] = [0]
    train: dict[str, Any] = {}
    search: Search = Search()
    asha: Asha = Asha()
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    resources: Resources = Resources()
    replicate: Replicate | None = Replicate()
    sensitivity: Sensitivity | None = None
    tracking_uri: str | None = None
    storage_path: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError("use letters, digits, '_', '.', '-' (it names folders and the MLflow experiment)")
        if len(name) > MAX_NAME:
            raise ValueError(f"{len(name)} characters; use at most {MAX_NAME} (it names folders, the MLflow experiment "
                             "and each cell's registered model, NAME.CELL)")
        return name

    @field_validator("datasets", "models", mode="before")
    @classmethod
    def _shorthand(cls, values, info):
        """A list of strings is shorthand: `[MR]` -> `{MR: {data: MR}}` (or `{model: ...}`)."""
        key = "data" if info.field_name == "datasets" else "model"
        if isinstance(values, list):
            values = {Path(str(v)).name or str(v): {key: v} for v in values}
        if not values:
            raise ValueError("give at least one entry")
        checked = {}
        for name, overrides in values.items():
            where = f"{info.field_name}.{name}"
            if not isinstance(overrides, dict):
                raise ValueError(f"entry {name!r} must be a mapping of training options")
            if "train" in overrides:
                raise ValueError(f"{where}.train: an entry's training options go in the entry itself, e.g. "
                                 f"{{{key}: ..., batch_size: 32, resources: {{gpu: 1}}}}")
            options = {k: v for k, v in overrides.items() if k != RESOURCES}
            _check_overrides(options, where)
            if RESOURCES in overrides:
                options[RESOURCES] = _entry_resources(overrides[RESOURCES], f"{where}.{RESOURCES}")
            checked[name] = options
        _no_join(checked, info.field_name)
        return checked

    @field_validator("losses")
    @classmethod
    def _losses(cls, losses):
        if not losses:
            raise ValueError("give at least one loss variant")
        _no_join(losses, "losses")
        return losses

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds):
        return _unique_seeds(seeds)

    @field_validator("train")
    @classmethod
    def _train(cls, values):
        bad = sorted(set(values) & GRID_KEYS)
        if bad:
            raise ValueError(f"{bad} are set by the grid axes, not under train")
        return _check_overrides(values, "train")

    @model_validator(mode="after")
    def _consistent(self):
        allowed = PROTOCOL_LOSSES[self.protocol]
        for name, variant in self.losses.items():
            if variant.loss not in allowed:
                raise ValueError(f"losses.{name}.loss: {variant.loss!r} is not a loss of the {self.protocol} protocol; allowed: {list(allowed)}")
        if self.metric is None:
            self.metric = DEFAULT_METRIC[self.protocol]
        if self.metric not in SELECTION_METRICS[self.protocol]:
            raise ValueError(f"metric: {self.metric!r} is not measured on validation after each epoch in the "
                             f"{self.protocol} protocol; use one of {list(SELECTION_METRICS[self.protocol])}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if self.replicate is not None and 0 in self.seeds and 0 in self.replicate.seeds:
            raise ValueError("replicate.seeds: 0 trains grid seed 0's best config with that cell's own search seed, "
                             "rerunning its best search trial exactly; use replicate seeds >= 1")
        if self.sensitivity is not None:
            self._check_sensitivity(self.sensitivity)
        cells = len(self.datasets) * len(self.models) * len(self.losses) * len(self.seeds)
        phases = {"search": cells * self.search.num_samples,
                  "replicate": cells * len(self.replicate.seeds) if self.replicate else 0}
        for phase, trials in phases.items():
            if trials > MAX_TRIALS:
                raise ValueError(f"the {phase} phase would run {trials:,} trials ({cells:,} cell(s)); a sweep's phase "
                                 f"holds at most {MAX_TRIALS:,} (one MLflow run each): split the grid into sweeps")
        return self

    def _check_sensitivity(self, sens: Sensitivity) -> None:
        unknown = [name for name in sens.losses if name not in self.losses]
        if unknown:
            raise ValueError(f"sensitivity.losses: {unknown} are not loss variants of this spec; variants: {list(self.losses)}")
        if self.replicate is None:
            raise ValueError("sensitivity needs the replicate phase: its runs are the centre point")
        if sens.seeds != "replicate" and not set(sens.seeds) <= set(self.replicate.seeds):
            raise ValueError(f"sensitivity.seeds {sens.seeds} must be replicate seeds {self.replicate.seeds} "
                             "(the replicate runs are the centre, paired seed by seed)")
        for param in sens.params:
            rule = PERTURBABLE[param]
            losses = {self.losses[name].loss for name in sens.losses}
            if rule.losses is None:  # lambda: weighs an auxiliary loss, integrated protocol only
                acts = self.protocol == "integrated" and any(loss != "ce" for loss in losses)
            else:
                acts = bool(losses & rule.losses)
            if not acts:
                raise ValueError(f"sensitivity.params.{param} acts on none of the chosen variants' losses {sorted(losses)}")

    def sensitivity_seeds(self) -> list[int]:
        sens = self.sensitivity
        return list(self.replicate.seeds) if sens is None or sens.seeds == "replicate" else list(sens.seeds)

    # ---- the grid -------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """Every (dataset, model, loss variant, seed) cell with its constant training options."""
        out = []
        for dname, dopts in self.datasets.items():
            for mname, mopts in self.models.items():
                for lname, variant in self.losses.items():
                    for seed in self.seeds:
                        constants = {"epochs": self.asha.max_t, "checkpoint_budget": SWEEP_CHECKPOINT_BUDGET,
                                     **self.train, **_options(dopts), **_options(mopts),
                                     "protocol": self.protocol, "loss": variant.loss, **variant.fixed, "seed": seed,
                                     "selection_metric": self.metric, "selection_mode": self.mode}
                        name = CELL_JOIN.join([dname, mname, lname, f"s{seed}"])
                        out.append(Cell(self.name, name, dname, mname, lname, seed, self.protocol, constants,
                                        variant.space, resources=self.cell_resources(dname, mname)))
        return out

    def cell_resources(self, dataset: str, model: str) -> Resources:
        """What one trial of a (dataset, model) cell holds: the spec's `resources`, then the
        dataset entry's, then the model entry's, key by key."""
        return Resources(**{**self.resources.model_dump(), **self.datasets[dataset].get(RESOURCES, {}),
                            **self.models[model].get(RESOURCES, {})})

    def check_names(self) -> None:
        """No two cells share a name (it keys the cell's Optuna study, parent run and trials). With
        no `__` in a key only underscores at a key's edge can still make one (`A_` + `B`, `A` + `_B`)."""
        seen: dict[str, Cell] = {}
        for cell in self.cells():
            other = seen.setdefault(cell.name, cell)
            if other is not cell:
                raise SpecError(f"cells ({other.dataset}, {other.model}, {other.loss}) and ({cell.dataset}, "
                                f"{cell.model}, {cell.loss}) would both be named {cell.name!r}; rename a dataset, "
                                "model or loss variant so that cell names stay apart")

    def check_cells(self) -> None:
        """Build a TrainConfig for every cell with the space's lowest values, and with each choice
        of every `choice` (and each bound of every range), so bad values fail now, not in a trial."""
        for cell in self.cells():
            device = str(cell.constants.get("device", "auto"))
            if device.startswith("cuda") and cell.resources.gpu == 0:
                raise SpecError(f"cell {cell.name}: device {device!r} needs a GPU, but the cell's resources give it "
                                "gpu 0 (a trial uses only the GPUs Ray assigns it); set resources.gpu in the spec, "
                                "the dataset or the model entry, or use device auto")
            lowest = {key: dist.lowest() for key, dist in cell.space.items()}
            variants = [lowest]
            for key, dist in cell.space.items():
                values = dist.choice or list(dist.loguniform or dist.uniform or dist.integer)
                variants += [{**lowest, key: value} for value in values]
            for varied in variants:
                try:
                    TrainConfig.from_dict({**cell.constants, **varied})
                except ValueError as err:
                    where = "" if varied == lowest else f" (with {', '.join(f'{k}={short(v)}' for k, v in varied.items())})"
                    raise SpecError(f"cell {cell.name}{where}: {err}") from err


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid cell: a dataset, a model, a loss variant and a seed, with its constant training
    options and its search space. `tags()` are the MLflow tags every run of the cell carries."""

    sweep: str
    name: str
    dataset: str
    model: str
    loss: str  # the loss variant's name in the spec
    seed: int  # the grid's seed (a replicate trial trains with its own)
    protocol: str
    constants: dict[str, Any] = dataclasses.field(default_factory=dict)
    space: dict[str, Distribution] = dataclasses.field(default_factory=dict)
    extra_tags: dict[str, str] = dataclasses.field(default_factory=dict)  # a sensitivity point's param, value, ...
    resources: Resources = dataclasses.field(default_factory=Resources)  # what one of its trials holds

    def tags(self) -> dict[str, str]:
        return {"sweep": self.sweep, "cell": self.name, "dataset": self.dataset, "model": self.model,
                "loss": self.loss, "seed": str(self.seed), "protocol": self.protocol, **self.extra_tags}


def _options(entry: dict) -> dict:
    """A dataset or model entry's training options (all its keys but `resources`)."""
    return {k: v for k, v in entry.items() if k != RESOURCES}


def _local_path(value: str, key: str) -> bool:
    """A value that can only mean a local path: any data but 'synthetic' and 'hf:...'; a model
    that starts like a path (a bare or 'org/name' value may be a Hub name)."""
    if key == "data":
        return value != "synthetic" and not value.startswith("hf:")
    return value.startswith(("/", "./", "../", "~"))


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; data and model paths that exist (relative to the working
    directory) become absolute, since trials run in folders of their own."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {path.stat().st_size:,} bytes is not a spec (at most {MAX_SPEC_BYTES:,})")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except SpecYAMLError as err:
        raise SpecError(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({short(str(err))})") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a spec") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a mapping with at least name, datasets, models, losses")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {key}: {e['msg']}" + (f" (got {short(e['input'])})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""))
        raise SpecError(f"{path}: invalid sweep spec\n" + "\n".join(lines)) from None
    for field, entries, key in (("datasets", spec.datasets, "data"), ("models", spec.models, "model")):
        for name, options in entries.items():  # trials run in their own folders: make local paths absolute
            value = options.get(key)
            if isinstance(value, str) and not value.startswith("hf:") and Path(value).exists():
                options[key] = str(Path(value).resolve())
            elif isinstance(value, str) and _local_path(value, key):
                raise SpecError(f"{path}: {field}.{name}.{key}: {value!r} does not exist (relative paths are read from "
                                f"{Path.cwd()})")
    try:
        spec.check_names()
        spec.check_cells()
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None
    return spec
