"""Every table and figure of one or more sweeps, and one report that embeds them.

Usage:
    gloss analyze report --experiment demo --out report/
    gloss analyze report --experiment table2 --experiment table3 --tracking-uri http://127.0.0.1:5000 --out paper/ --format html

Writes OUT/tables/*.{md,tex,csv}, OUT/figures/*.{png,pdf} and OUT/report.md (or report.html).
"""

from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import plots
from analysis.importance import param_importances
from analysis.load import Runs, load_runs
from analysis.sensitivity import ablation_curves, ablation_points, families, paired_rows, points_frame, tornado_bars
from analysis.stats import ALPHA, STAR_LEGEND, stars
from analysis.table import Table, fmt
from analysis.tables import (aggregate_table, block_labels, convergence_table, gloss_method, in_paper_order,
                             p_text, ranks_table, scores, table2, table3, table4, table5, table9)
from gloss_core.provenance import git_commit

CURVE_METRICS = ("val_macro_f1", "val_macro_silhouette")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


@dataclass
class Figure:
    """One figure of the report: its files (PNG, PDF), or, when there is nothing to draw, why."""

    caption: str
    paths: list[Path]
    missing: str = ""


def provenance_lines(runs: Runs) -> list[str]:
    """Per sweep: git commit, packages, the search and replicate seeds (said apart), trials per
    phase, search space and ASHA; then the analysis's own commit."""
    lines = []
    for name, sweep in runs.sweeps.items():
        mine = runs.runs[runs.runs["sweep"] == name] if not runs.runs.empty else runs.runs
        phases = mine["phase"].value_counts().to_dict() if not mine.empty else {}
        versions = ", ".join(f"{k} {v}" for k, v in sweep.package_versions.items()) or "not recorded"
        spec = sweep.spec
        if spec is None:
            seeds = "seeds not recorded (no spec)"
            space, settings = {}, "search and ASHA not recorded"
        else:
            seeds = (f"grid seeds {spec.seeds}, search sampler seed {spec.search.seed}, replicate seeds "
                     f"{spec.replicate.seeds if spec.replicate else []}"
                     + (f", sensitivity seeds {spec.sensitivity_seeds()}" if spec.sensitivity else ""))
            space = {variant: {param: dist.model_dump(exclude_none=True, by_alias=True) for param, dist in loss.space.items()}
                     for variant, loss in spec.losses.items()}
            settings = f"search {json.dumps(spec.search.model_dump())}, ASHA {json.dumps(spec.asha.model_dump())}"
        counts = ", ".join(f"{phases.get(phase, 0)} {phase}" for phase in ("search", "replicate", "sensitivity")
                           if phase != "sensitivity" or phases.get(phase))
        lines.append(f"sweep {name} | git {sweep.git_commit} | packages: {versions} | {seeds} | trials: {counts} | "
                     f"search space {json.dumps(space, separators=(',', ':'))} | {settings}")
    lines.append(f"analysis git {git_commit()}")
    return lines


def footer_text(runs: Runs) -> str:
    """The provenance in one line (table files and figure metadata)."""
    return " || ".join(provenance_lines(runs))


def _history(runs: Runs, metric: str) -> pd.DataFrame:
    frame = runs.history(metric)
    frame = frame[frame["ended"] == "completed"]
    if frame.empty:
        return frame.assign(block=pd.Series(dtype=str))
    return in_paper_order(_with_blocks(frame))


def _with_blocks(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the block label used by the tables."""
    return frame.assign(block=block_labels(frame))


def _timing(runs: Runs) -> pd.DataFrame:
    frame = runs.tidy[runs.tidy["metric"].str.match(r"^time_(?!per_epoch).+_s$") & runs.tidy["epoch"].notna()
                      & (runs.tidy["phase"] == "replicate") & (runs.tidy["ended"] == "completed")]
    if frame.empty or not (frame["value"] > 0).any():  # timing off: every phase logged as 0
        return pd.DataFrame(columns=["block", "method", "phase", "seconds"])
    frame = in_paper_order(_with_blocks(frame.assign(phase_name=frame["metric"].str[5:-2])))
    per_run = frame.groupby(["block", "method", "phase_name", "run_id"], sort=False)["value"].mean().reset_index()
    out = per_run.groupby(["block", "method", "phase_name"], sort=False)["value"].mean().reset_index()
    return out.rename(columns={"phase_name": "phase", "value": "seconds"})


def _artifact_figures(runs: Runs, gloss: str | None, folder: Path, meta: str) -> list[Figure]:
    """t-SNE of test embeddings and adjacency heatmaps, for replicate runs that logged them; each
    method's lowest seed that has them, named in the caption."""
    reps = runs.runs[(runs.runs["phase"] == "replicate") & (runs.runs["ended"] == "completed")] if not runs.runs.empty else runs.runs
    if reps.empty:
        return []
    client = MlflowClient(runs.tracking_uri)
    out = []
    reps = _with_blocks(reps).sort_values("seed")
    with tempfile.TemporaryDirectory() as scratch:
        for block, part in reps.groupby("block", sort=False):
            embeddings, seeds, adjacency_run = {}, {}, None
            for method, rows in part.groupby("method", sort=False):
                for _, run in rows.iterrows():
                    run_id = run["run_id"]
                    names = {Path(a.path).name for a in _listed(runs, client, run_id)}
                    if not {"test_embeddings.npy", "test_labels.npy"} <= names:
                        continue
                    local = Path(client.download_artifacts(run_id, "artifacts", scratch + f"/{run_id}"))
                    embeddings[method] = (np.load(local / "test_embeddings.npy"), np.load(local / "test_labels.npy"))
                    seeds[method] = int(run["seed"])
                    if any(n.startswith("adjacency_epoch") for n in names) and (method == gloss or adjacency_run is None):
                        adjacency_run = (method, local, int(run["seed"]))
                    break
            if embeddings:
                seed_text = _seed_text(seeds)
                caption = f"t-SNE of test embeddings, {block} ({seed_text})"
                out.append(Figure(caption, plots.tsne(embeddings, f"{block} ({seed_text})", folder,
                                                      f"tsne_{slug(block)}", _meta(caption, meta))))
            if adjacency_run is not None:
                method, local, seed = adjacency_run
                files = sorted(local.glob("adjacency_epoch*.npy"))
                chosen = [files[i] for i in sorted({round(j) for j in np.linspace(0, len(files) - 1, min(4, len(files)))})]
                matrices = {int(f.stem.removeprefix("adjacency_epoch")): np.load(f) for f in chosen}
                caption = f"Adjacency of one training batch over epochs, {method}, {block} (seed {seed})"
                out.append(Figure(caption, plots.adjacency(
                    matrices, np.load(local / "adjacency_labels.npy"),
                    f"One batch's affinity over epochs ({method}, {block}, seed {seed}; rows by label)",
                    folder, f"adjacency_{slug(block)}", _meta(caption, meta))))
    return out


def _listed(runs: Runs, client: MlflowClient, run_id: str) -> list:
    """The files under a run's `artifacts/`. Listed at the run's artifact URI, as the loader read
    it: `client.list_artifacts` looks the run up in the store first, once per run, and a
    paper-scale sweep's report lists 180 replicate runs (issue 20)."""
    root = runs.artifact_uris.get(run_id)
    if not root:
        return client.list_artifacts(run_id, "artifacts")
    return mlflow.artifacts.list_artifacts(artifact_uri=f"{root.rstrip('/')}/artifacts", tracking_uri=runs.tracking_uri)


def _seed_text(seeds: dict[str, int]) -> str:
    values = set(seeds.values())
    if len(values) == 1:
        return f"seed {values.pop()}"
    return "seeds " + ", ".join(f"{method} {seed}" for method, seed in seeds.items())


def _meta(caption: str, provenance: str) -> dict[str, str]:
    return {"title": caption, "provenance": provenance}


def cd_allowed(test, alpha: float) -> str:
    """Why Demsar's procedure does not allow a CD diagram here ("" when it does)."""
    k = len(test.ranks)
    if k < 3 or test.n_blocks < 2:
        return f"needs k ≥ 3 methods and N ≥ 2 datasets; here k = {k}, N = {test.n_blocks}"
    if test.friedman_p is None or not test.friedman_p < alpha:
        p = "n/a" if test.friedman_p is None else f"{test.friedman_p:.3g}"
        return f"Friedman's test is not significant (p = {p} ≥ α = {alpha}), so no post-hoc Nemenyi comparison is made"
    return ""


def sensitivity_table(paired: pd.DataFrame, metric: str, alpha: float = ALPHA) -> Table | None:
    if paired.empty:
        return None
    cells, numbers = [], []
    for r in paired.itertuples():
        verdict = ("higher" if r.diff > 0 else "lower") if r.p_holm < alpha else "n.s."
        cells.append({"Sweep": r.sweep, "Centre": r.group, "Param": r.param, "Value (centre)": f"{r.x:g} ({r.centre_x:g})",
                      "n": str(r.n), "mean": fmt(r.mean, 4), "centre": fmt(r.centre_mean, 4), "Δ": fmt_signed(r.diff),
                      "95% CI": f"[{fmt(r.ci_low, 4)}, {fmt(r.ci_high, 4)}]", "p": p_text(r.p),
                      "p (Holm)": p_text(r.p_holm) + stars(r.p_holm), "verdict": verdict})
        numbers.append({"sweep": r.sweep, "centre": r.group, "param": r.param, "value": r.x, "centre_value": r.centre_x,
                        "n": r.n, "mean": r.mean, "centre_mean": r.centre_mean, "diff": r.diff, "ci_low": r.ci_low,
                        "ci_high": r.ci_high, "p": r.p, "p_holm": r.p_holm, "verdict": verdict, "note": r.note})
    notes = [f"{metric} of each one-at-a-time perturbation against its centre (the best config's replicate runs), "
             "paired over the seeds both have: Δ = perturbation − centre with its 95% t-interval; Holm across each "
             f"centre's perturbations. {STAR_LEGEND}.",
             f"verdict: higher / lower when the Holm-adjusted p < α = {alpha}; n.s. otherwise (with 2-3 seeds only a "
             "large, consistent change can reach significance)."]
    return Table("sensitivity", "Sensitivity: each perturbation against the centre, paired over seeds",
                 pd.DataFrame(cells), pd.DataFrame(numbers), {}, notes)


def fmt_signed(value: float) -> str:
    return "–" if value != value else f"{value:+.4f}"


def _sensitivity_figures(runs: Runs, metric: str, folder: Path, meta: str) -> tuple[list[Figure], Table | None]:
    points = points_frame(runs, metric)
    figures = []
    for (sweep, group), (centre, bars) in tornado_bars(points).items():
        caption = f"Tornado around {group} ({sweep})"
        figures.append(Figure(caption, plots.tornado(bars, centre, group, metric, folder / sweep,
                                                     f"tornado_{slug(group)}", _meta(caption, meta))))
    curves = ablation_curves(points)
    for param, frame in curves.items():
        caption = f"Ablation of {param} around the centre ({', '.join(sorted(set(points['sweep'])))})"
        figures.append(Figure(caption, plots.ablation(frame, param, metric, folder / "sensitivity", _meta(caption, meta))))
    with_points = set(points["sweep"])
    sens = scores(runs, metric)
    for name, sweep in runs.sweeps.items():
        if name in with_points:
            continue
        for param, fams in families(sweep.spec).items():
            family = max(fams, key=len)
            if len(family) >= 3:
                caption = f"Ablation of {param} ({name})"
                paths = plots.ablation(ablation_points(sens[sens["sweep"] == name], family), param, metric,
                                       folder / name, _meta(caption, meta))
                if paths:
                    figures.append(Figure(caption, paths))
    return figures, sensitivity_table(paired_rows(points), metric)


def build(runs: Runs, out: Path, gloss: str | None = None, baseline: str | None = "ce",
          metric: str = "test_accuracy", sensitivity_metric: str = "test_macro_f1") -> dict:
    """Write every table and figure the runs allow; returns {"tables", "figures", "provenance", ...}.
    A figure with nothing to draw is listed with the reason instead of files."""
    provenance = provenance_lines(runs)
    meta = " || ".join(provenance)
    tables_dir, figures_dir = out / "tables", out / "figures"
    tables = [table2(runs, baseline), table3(runs), table4(runs, gloss), table5(runs, gloss),
              table9(runs, metric, gloss)]
    ranks, tests = ranks_table(runs, metric)
    tables += [ranks, aggregate_table(runs, metric), convergence_table(_history(runs, "val_macro_f1"))]
    sens_figures, sens_table = _sensitivity_figures(runs, sensitivity_metric, figures_dir, meta)
    tables = [t for t in tables + [sens_table] if t is not None]
    for table in tables:
        table.footer = meta
        table.write(tables_dir)
    figures: list[Figure] = []
    for curve_metric in CURVE_METRICS:
        caption = f"Validation learning curves ({curve_metric})"
        history = _history(runs, curve_metric)
        paths = plots.learning_curves(history, curve_metric, figures_dir, _meta(caption, meta))
        figures.append(Figure(caption, paths, "" if paths else f"no replicate run logged {curve_metric} per epoch"))
    for label, test in tests.items():
        caption = f"Critical-difference diagram, {label}"
        why = cd_allowed(test, ALPHA)
        paths = [] if why else plots.cd_diagram(test, label, figures_dir, f"cd_diagram_{slug(label)}", _meta(caption, meta))
        figures.append(Figure(caption, paths, f"not drawn: Demšar's procedure {why}" if why else ""))
    caption = "Per-epoch timing breakdown"
    paths = plots.timing_breakdown(_timing(runs), figures_dir, _meta(caption, meta))
    figures.append(Figure(caption, paths, "" if paths else
                          "not drawn: no replicate run recorded per-phase times (train.timing was off)"))
    figures += sens_figures
    caption = "Hyperparameter importance (search phase, fANOVA)"
    paths = plots.importance(param_importances(runs), figures_dir, _meta(caption, meta))
    figures.append(Figure(caption, paths, "" if paths else
                          "not drawn: no cell has >= 4 full-budget search trials over >= 2 searched parameters with "
                          "differing scores"))
    target = gloss_method(scores(runs, metric), gloss, runs) if not runs.runs.empty else None
    figures += _artifact_figures(runs, target, figures_dir, meta)
    return {"tables": tables, "figures": figures, "provenance": provenance, "footer": meta,
            "problems": runs.problems, "tests": tests}


def write_report(experiments: list[str], tracking_uri: str, out: Path, fmt: str = "md", **options) -> Path:
    runs = load_runs(experiments, tracking_uri, history=("replicate",))
    if runs.runs.empty:
        raise LookupError(f"no trial runs in {', '.join(experiments)} yet: nothing to report (run the sweep first)")
    out.mkdir(parents=True, exist_ok=True)
    built = build(runs, out, **options)
    title = f"G-Loss analysis: {', '.join(experiments)}"
    checks = built["problems"] or [
        "none: every method has the same seeds, no duplicate or failed runs, no training run twice"]
    if fmt == "html":
        parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Provenance</h2><ul>",
                 *[f"<li><small>{html.escape(line)}</small></li>" for line in built["provenance"]], "</ul>",
                 "<h2>Data checks</h2><ul>", *[f"<li>{html.escape(p)}</li>" for p in checks], "</ul>"]
        for table in built["tables"]:
            cells = table.marked(lambda t: f"<b>{t}</b>", lambda t: f"<u>{t}</u>", html.escape)
            parts += [f"<h2>{html.escape(table.caption)}</h2>", cells.to_html(index=False, escape=False),
                      *[f"<p><small>{html.escape(n)}</small></p>" for n in table.notes]]
        parts.append("<h2>Figures</h2>")
        for figure in built["figures"]:
            parts.append(f"<h3>{html.escape(figure.caption)}</h3>")
            if not figure.paths:
                parts.append(f"<p><i>{html.escape(figure.missing)}</i></p>")
                continue
            png = base64.b64encode(figure.paths[0].read_bytes()).decode()  # self-contained: the file travels alone
            parts += [f'<img src="data:image/png;base64,{png}" style="max-width:100%">',
                      f'<p><a href="{figure.paths[1].relative_to(out)}">PDF</a></p>']
        path = out / "report.html"
        path.write_text("<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>\n"
                        + "\n".join(parts), encoding="utf-8")
        return path
    parts = [f"# {title}", "", "## Provenance", "", *[f"- {line}" for line in built["provenance"]], "",
             "## Data checks", "", *[f"- {p}" for p in checks], ""]
    for table in built["tables"]:
        parts += [table.markdown(footer=False), ""]
    parts += ["## Figures", ""]
    for figure in built["figures"]:
        parts += [f"### {figure.caption}", ""]
        if figure.paths:
            parts += [f"![{figure.caption}]({figure.paths[0].relative_to(out)})", "",
                      f"[PDF]({figure.paths[1].relative_to(out)})", ""]
        else:
            parts += [f"*{figure.missing}.*", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
