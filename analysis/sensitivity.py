"""One-factor families of loss variants, read from a sweep's recorded spec, for ablation curves and
tornado plots.

Two variants of a spec belong to one family of parameter p when they use the same loss and the
same search space, and their fixed values agree on everything but p (a value not fixed counts as
the TrainConfig default). The ablation specs (sweeps/specs/ablation_*.yaml) are such families;
sweeps/specs/sensitivity_mr.yaml holds a base variant with a low and a high value of each of
sigma (as sigma_scale), lambda and gamma, the tornado of paper Fig. 7.
"""

from __future__ import annotations

import json
from dataclasses import fields

import pandas as pd

from analysis.tables import mean_std_n
from gloss_core.config import TrainConfig
from sweeps.spec import SweepSpec

PARAMS = ("sigma", "sigma_scale", "lam", "gamma")
DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


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


def tornado_bars(scores: pd.DataFrame, found: dict[str, list[dict[str, float]]]) -> tuple[str | None, dict]:
    """The base variant (the one in most families) and, per block, its mean and the low/high bars."""
    membership: dict[str, int] = {}
    for fams in found.values():
        for family in fams:
            for name in family:
                membership[name] = membership.get(name, 0) + 1
    if not membership:
        return None, {}
    base = max(membership, key=lambda name: (membership[name], name))
    out = {}
    for block, part in scores.groupby("block", sort=False):
        stats = mean_std_n(part, ["method"]).set_index("method")
        if base not in stats.index:
            continue
        rows = []
        for param, fams in found.items():
            family = next((f for f in fams if base in f), None)
            if family is None:
                continue
            centre = family[base]
            low = [n for n in family if family[n] < centre and n in stats.index]
            high = [n for n in family if family[n] > centre and n in stats.index]
            if not low or not high:
                continue
            lo = min(low, key=family.get)
            hi = max(high, key=family.get)
            rows.append({"param": param, "low_x": family[lo], "low_mean": stats.loc[lo, "mean"],
                         "low_std": stats.loc[lo, "std"], "high_x": family[hi], "high_mean": stats.loc[hi, "mean"],
                         "high_std": stats.loc[hi, "std"]})
        if rows:
            out[block] = (float(stats.loc[base, "mean"]), pd.DataFrame(rows))
    return base, out
