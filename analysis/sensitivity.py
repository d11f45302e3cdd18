"""One-at-a-time sensitivity: perturbations against their centre, for the tornado, the paired table
and the ablation curves.

Two sources give the same frame (`points_frame`), one row per (group, perturbation, seed):
- the sensitivity phase (`sweeps/sensitivity.py`): runs tagged `param`, `direction`, `value`,
  `base_cell`; the centre is the base cell's replicate runs on the same seeds;
- a fully manual family (e.g. sweeps/specs/sensitivity_mr.yaml): loss variants of one spec that
  agree on everything but one parameter (a value not fixed counts as the TrainConfig default);
  the centre is the variant that belongs to the most families.

Families of loss variants also give the ablation specs' curves (sweeps/specs/ablation_*.yaml).
"""

from __future__ import annotations

import json
import math

import pandas as pd

from analysis.load import Runs, dedupe
from analysis.stats import holm, paired_test
from analysis.tables import block_labels, mean_std_n, scores
from gloss_core.spread import mean_std
from sweeps.sensitivity import DEFAULTS
from sweeps.spec import SweepSpec

PARAMS = ("sigma", "sigma_scale", "lam", "gamma")
POINT_COLUMNS = ["sweep", "group", "param", "direction", "x", "centre_x", "seed", "value"]  # param "" = the centre


def families(spec: SweepSpec | None, params=PARAMS) -> dict[str, list[dict[str, float]]]:
    """param -> list of families, each {variant name: numeric value of the param}."""
    out: dict[str, list[dict[str, float]]] = {}
    variants = spec.losses if spec is not None else {}
    for param in params:
        groups: dict[str, dict[str, float]] = {}
        for name, variant in variants.items():
            if param in variant.space:
                continue
            fixed = {key: variant.fixed.get(key, DEFAULTS.get(key)) for key in PARAMS}
            fixed.update({k: v for k, v in variant.fixed.items() if k not in PARAMS})
            value = fixed.pop(param)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            space = {k: dist.model_dump(exclude_none=True, by_alias=True) for k, dist in variant.space.items()}
            key = json.dumps([variant.loss, space, fixed], sort_keys=True, default=str)
            groups.setdefault(key, {})[name] = float(value)
        found = [g for g in groups.values() if len(set(g.values())) >= 2]
        if found:
            out[param] = found
    return out


def ablation_points(scores: pd.DataFrame, family: dict[str, float]) -> pd.DataFrame:
    """Mean, std, n of the metric per (block, parameter value) over the family's variants."""
    part = scores[scores["method"].isin(family)].assign(x=lambda f: f["method"].map(family))
    if part.empty:
        return pd.DataFrame(columns=["block", "x", "mean", "std", "n"])
    return mean_std_n(part, ["block", "x"])


# ---- one frame from either source -----------------------------------------------------------------
def _group_labels(frame: pd.DataFrame) -> pd.Series:
    """"<method>, <block>": the loss variant and the dataset (with model and protocol when they vary)."""
    return frame["method"].astype(str) + ", " + block_labels(frame)


def phase_points(runs: Runs, metric: str) -> pd.DataFrame:
    """The sensitivity phase's runs and their centres (the base cells' replicate runs, same seeds)."""
    sens = dedupe(runs.final(metric, phase="sensitivity"))
    if sens.empty or "tags.base_cell" not in sens:
        return pd.DataFrame(columns=POINT_COLUMNS)
    centre = dedupe(runs.final(metric, phase="replicate"))
    centre = centre[centre["cell"].isin(set(sens["tags.base_cell"]))]
    both = pd.concat([sens.assign(base=sens["tags.base_cell"]), centre.assign(base=centre["cell"])], ignore_index=True)
    both["group"] = _group_labels(both)
    group_of = dict(zip(zip(both["sweep"], both["base"]), both["group"]))
    rows = []
    for _, r in sens.iterrows():
        centre_x = float(r["tags.centre"]) if isinstance(r.get("tags.centre"), str) else math.nan
        rows.append({"sweep": r["sweep"], "group": group_of[(r["sweep"], r["tags.base_cell"])], "param": r["tags.param"],
                     "direction": r["tags.direction"], "x": float(r["tags.value"]), "centre_x": centre_x,
                     "seed": r["seed"], "value": r["value"]})
    for _, r in centre.iterrows():
        rows.append({"sweep": r["sweep"], "group": group_of[(r["sweep"], r["cell"])], "param": "", "direction": "centre",
                     "x": math.nan, "centre_x": math.nan, "seed": r["seed"], "value": r["value"]})
    frame = pd.DataFrame(rows, columns=POINT_COLUMNS)
    return frame.sort_values(["sweep", "group", "param", "x"], kind="stable", ignore_index=True)


def family_points(runs: Runs, metric: str) -> pd.DataFrame:
    """Fully manual families of loss variants (no sensitivity phase): the centre is the variant in
    the most families; every other member of a family with the centre is a perturbation."""
    frame = scores(runs, metric)
    rows = []
    for name, sweep in runs.sweeps.items():
        found = families(sweep.spec)
        membership: dict[str, int] = {}
        for fams in found.values():
            for family in fams:
                for variant in family:
                    membership[variant] = membership.get(variant, 0) + 1
        if not membership or max(membership.values()) < 2:
            continue  # no variant shared by two families: an ablation, not a one-at-a-time design
        base = max(membership, key=lambda variant: (membership[variant], variant))
        mine = frame[frame["sweep"] == name]
        mine = mine.assign(group=base + ", " + mine["block"])
        for param, fams in found.items():
            family = next((f for f in fams if base in f), None)
            if family is None:
                continue
            centre_x = family[base]
            for variant, x in family.items():
                if variant == base:
                    continue
                for r in mine[mine["method"] == variant].itertuples():
                    rows.append({"sweep": name, "group": r.group, "param": param, "x": x, "centre_x": centre_x,
                                 "direction": "low" if x < centre_x else "high", "seed": r.seed, "value": r.value})
        for r in mine[mine["method"] == base].itertuples():
            rows.append({"sweep": name, "group": r.group, "param": "", "direction": "centre", "x": math.nan,
                         "centre_x": math.nan, "seed": r.seed, "value": r.value})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def points_frame(runs: Runs, metric: str) -> pd.DataFrame:
    """Both sources, one frame: sweep, group, param ("" = centre), direction, x, centre_x, seed, value."""
    parts = [part for part in (phase_points(runs, metric), family_points(runs, metric)) if not part.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=POINT_COLUMNS)


# ---- what the figures and the table show ------------------------------------------------------------
def tornado_bars(points: pd.DataFrame) -> dict[tuple[str, str], tuple[float, pd.DataFrame]]:
    """(sweep, group) -> (the centre's mean, one row per param: the lowest and highest value's mean,
    std and n; a side that was skipped is NaN), sorted by swing, largest first."""
    out = {}
    for (sweep, group), part in points.groupby(["sweep", "group"], sort=False):
        centre = part[part["param"] == ""]
        if centre.empty:
            continue
        rows = []
        for param, mine in part[part["param"] != ""].groupby("param", sort=False):
            row = {"param": param, "centre_x": float(mine["centre_x"].iloc[0])}
            for side, pick in (("low", "min"), ("high", "max")):
                own = mine[mine["direction"].str.startswith(side)]
                x = own["x"].agg(pick) if len(own) else math.nan
                spread = mean_std(own.loc[own["x"] == x, "value"])
                row.update({f"{side}_x": x, f"{side}_mean": spread.mean, f"{side}_std": spread.std, f"{side}_n": spread.n})
            rows.append(row)
        if rows:
            centre_mean = mean_std(centre["value"]).mean
            bars = pd.DataFrame(rows)
            ends = bars[["low_mean", "high_mean"]].fillna(centre_mean)
            bars["swing"] = (ends["high_mean"] - ends["low_mean"]).abs()
            out[(sweep, group)] = (centre_mean, bars.sort_values("swing", ascending=False, kind="stable")
                                   .reset_index(drop=True))
    return out


def paired_rows(points: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Each perturbation against its centre, paired over the seeds both have: Δ (point − centre), its
    t-interval, p and Holm's p across the group's perturbations."""
    rows = []
    for (sweep, group), part in points.groupby(["sweep", "group"], sort=False):
        centre = part[part["param"] == ""].drop_duplicates("seed").set_index("seed")["value"]
        found = []
        for (param, x), mine in part[part["param"] != ""].groupby(["param", "x"], sort=False):
            mine = mine.drop_duplicates("seed").set_index("seed")["value"]
            seeds = sorted(set(mine.index) & set(centre.index))
            result = paired_test(mine[seeds].to_numpy(), centre[seeds].to_numpy(), confidence=confidence)
            found.append({"sweep": sweep, "group": group, "param": param, "x": x,
                          "centre_x": float(part.loc[part["param"] == param, "centre_x"].iloc[0]),
                          "n": result.n, "mean": result.mean_a, "centre_mean": result.mean_b, "diff": result.diff,
                          "ci_low": result.ci_low, "ci_high": result.ci_high, "p": result.p, "note": result.note})
        for row, p_holm in zip(found, holm([row["p"] for row in found])):
            rows.append({**row, "p_holm": p_holm})
    return pd.DataFrame(rows, columns=["sweep", "group", "param", "x", "centre_x", "n", "mean", "centre_mean", "diff",
                                       "ci_low", "ci_high", "p", "p_holm", "note"])


def ablation_curves(points: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """param -> rows (block = group, x, mean, std, n) for every group where the param has at least
    three values, the centre included."""
    out = {}
    for param in [p for p in dict.fromkeys(points["param"]) if p]:
        frames = []
        for (sweep, group), part in points.groupby(["sweep", "group"], sort=False):
            mine = part[part["param"] == param]
            if mine.empty:
                continue
            centre = part[part["param"] == ""].assign(x=float(mine["centre_x"].iloc[0]))
            both = pd.concat([mine, centre], ignore_index=True)
            if both["x"].nunique() >= 3:
                frames.append(mean_std_n(both.assign(block=group), ["block", "x"]))
        if frames:
            out[param] = pd.concat(frames, ignore_index=True)
    return out
