"""Each cell's model worth keeping: of its replicate seeds, the one with the best validation score
(never chosen on test) is registered as `<sweep>.<cell>` in the MLflow Model Registry, and its alias
`best` points at that version (`models:/<sweep>.<cell>@best`)."""

from __future__ import annotations

from gloss_core.spread import MeanStd
from serving.registry import BEST, register
from sweeps.mlflow_runs import trial_run
from trainables.report import TrialResult


def registered_name(sweep: str, cell: str) -> str:
    """A cell's model in the MLflow Model Registry."""
    return f"{sweep}.{cell}"


def register_best(client, exp_id: str, sweep: str, cell: str, metric: str, mode: str, rows: list[TrialResult],
                  spreads: dict[str, MeanStd]) -> str | None:
    """Register the replicate whose score (validation `metric` at its best epoch) is best; ties go to
    the lowest seed. Its tags carry the cell's test mean ± std over seeds and the run id. Returns
    the version, or None when no replicate logged a model."""
    scored = [row for row in rows if row.score == row.score]
    if not scored:
        return None
    sign = -1 if mode == "max" else 1
    chosen = min(scored, key=lambda row: (sign * row.score, row.seed if row.seed is not None else 0))
    found = trial_run(client, exp_id, "replicate", chosen.trial_id)
    model_uri = found.data.tags.get("model_uri") if found is not None else None
    if model_uri is None:
        return None
    run_id = found.info.run_id
    tags = {"sweep": sweep, "cell": cell, "run_id": run_id, "seed": found.data.tags.get("seed", ""),
            "selected_on": f"validation {metric} = {chosen.score:.4f} ({mode}), the best of {len(rows)} seeds"}
    for key, spread in spreads.items():
        if spread.n:
            percent = key != "test_macro_silhouette"
            tags[key] = spread.format(scale=100 if percent else 1, decimals=2 if percent else 4) + (
                f"{' %' if percent else ''} (mean ± std over {spread.n} seeds)")
    name = registered_name(sweep, cell)
    kept = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if kept:  # a resume past the replicate phase: this replicate is registered already, not again
        return kept[0].version
    version = register(client, name, model_uri, run_id, tags, alias=BEST)
    client.set_tag(run_id, "registered_as", f"models:/{name}/{version}")
    return version
