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
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import plots
from analysis.importance import param_importances
from analysis.load import Runs, load_runs
from analysis.sensitivity import ablation_points, families, tornado_bars
from analysis.tables import (aggregate_table, block_labels, convergence_table, gloss_method, in_paper_order,
                             ranks_table, scores, table2, table3, table4, table5, table9)
from gloss_core.provenance import git_commit

CURVE_METRICS = ("val_macro_f1", "val_macro_silhouette")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def footer_text(runs: Runs) -> str:
    """Sweep, git commit, package versions, seeds, number of trials, search space and ASHA."""
    parts = []
    for name, sweep in runs.sweeps.items():
        mine = runs.runs[runs.runs["sweep"] == name] if not runs.runs.empty else runs.runs
        phases = mine["phase"].value_counts().to_dict() if not mine.empty else {}
        seeds = sorted({int(s) for s in mine.get("seed", pd.Series(dtype=object)).dropna()})
        versions = ", ".join(f"{k} {v}" for k, v in sweep.package_versions.items()) or "not recorded"
        spec = sweep.spec
        space = {} if spec is None else {
            variant: {param: dist.model_dump(exclude_none=True, by_alias=True) for param, dist in loss.space.items()}
            for variant, loss in spec.losses.items()}
        settings = ("search and ASHA not recorded" if spec is None else
                    f"search {json.dumps(spec.search.model_dump())}, ASHA {json.dumps(spec.asha.model_dump())}")
        parts.append(
            f"sweep {name} | git {sweep.git_commit} | packages: {versions} | seeds {seeds} | trials: "
            f"{phases.get('search', 0)} search, {phases.get('replicate', 0)} replicate | search space "
            f"{json.dumps(space, separators=(',', ':'))} | {settings}")
    return " || ".join(parts) + f" | analysis git {git_commit()}"


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
    if frame.empty:
        return pd.DataFrame(columns=["block", "method", "phase", "seconds"])
    frame = in_paper_order(_with_blocks(frame.assign(phase_name=frame["metric"].str[5:-2])))
    per_run = frame.groupby(["block", "method", "phase_name", "run_id"], sort=False)["value"].mean().reset_index()
    out = per_run.groupby(["block", "method", "phase_name"], sort=False)["value"].mean().reset_index()
    return out.rename(columns={"phase_name": "phase", "value": "seconds"})


def _artifact_figures(runs: Runs, gloss: str | None, folder: Path, footer: str) -> list[tuple[str, list[Path]]]:
    """t-SNE of test embeddings and adjacency heatmaps, for replicate runs that logged them."""
    reps = runs.runs[(runs.runs["phase"] == "replicate") & (runs.runs["ended"] == "completed")] if not runs.runs.empty else runs.runs
    if reps.empty:
        return []
    client = MlflowClient(runs.tracking_uri)
    out = []
    reps = _with_blocks(reps).sort_values("seed")
    with tempfile.TemporaryDirectory() as scratch:
        for block, part in reps.groupby("block", sort=False):
            embeddings, adjacency_run = {}, None
            for method, rows in part.groupby("method", sort=False):
                run_id = rows.iloc[0]["run_id"]
                names = {Path(a.path).name for a in client.list_artifacts(run_id, "artifacts")}
                if {"test_embeddings.npy", "test_labels.npy"} <= names:
                    local = Path(client.download_artifacts(run_id, "artifacts", scratch + f"/{run_id}"))
                    embeddings[method] = (np.load(local / "test_embeddings.npy"), np.load(local / "test_labels.npy"))
                    if any(n.startswith("adjacency_epoch") for n in names) and (method == gloss or adjacency_run is None):
                        adjacency_run = (method, local)
            if embeddings:
                out.append((f"t-SNE of test embeddings, {block}",
                            plots.tsne(embeddings, block, folder, f"tsne_{slug(block)}", footer)))
            if adjacency_run is not None:
                method, local = adjacency_run
                files = sorted(local.glob("adjacency_epoch*.npy"))
                chosen = [files[i] for i in sorted({round(j) for j in np.linspace(0, len(files) - 1, min(4, len(files)))})]
                matrices = {int(f.stem.removeprefix("adjacency_epoch")): np.load(f) for f in chosen}
                out.append((f"Adjacency of one training batch over epochs, {method}, {block}",
                            plots.adjacency(matrices, np.load(local / "adjacency_labels.npy"),
                                            f"One batch's affinity over epochs ({method}, {block}; rows by label)",
                                            folder, f"adjacency_{slug(block)}", footer)))
    return out


def build(runs: Runs, out: Path, gloss: str | None = None, baseline: str | None = "ce",
          metric: str = "test_accuracy", sensitivity_metric: str = "test_macro_f1") -> dict:
    """Write every table and figure the runs allow; returns {"tables": [...], "figures": [...]}."""
    footer = footer_text(runs)
    tables_dir, figures_dir = out / "tables", out / "figures"
    tables = [table2(runs, baseline), table3(runs), table4(runs, gloss), table5(runs, gloss),
              table9(runs, metric, gloss)]
    ranks, tests = ranks_table(runs, metric)
    tables += [ranks, aggregate_table(runs, metric), convergence_table(_history(runs, "val_macro_f1"))]
    tables = [t for t in tables if t is not None]
    for table in tables:
        table.footer = footer
        table.write(tables_dir)
    figures: list[tuple[str, list[Path]]] = []
    for curve_metric in CURVE_METRICS:
        paths = plots.learning_curves(_history(runs, curve_metric), curve_metric, figures_dir, footer)
        if paths:
            figures.append((f"Validation learning curves ({curve_metric})", paths))
    for label, test in tests.items():
        figures.append((f"Critical-difference diagram, {label}",
                        plots.cd_diagram(test, label, figures_dir, f"cd_diagram_{slug(label)}", footer)))
    paths = plots.timing_breakdown(_timing(runs), figures_dir, footer)
    if paths:
        figures.append(("Per-epoch timing breakdown", paths))
    sens = scores(runs, sensitivity_metric)
    for name, sweep in runs.sweeps.items():
        found = families(sweep.spec)
        mine = sens[sens["sweep"] == name]
        for param, fams in found.items():
            family = max(fams, key=len)
            if len(family) >= 3:
                points = ablation_points(mine, family)
                paths = plots.ablation(points, param, sensitivity_metric, figures_dir / name, footer)
                if paths:
                    figures.append((f"Ablation of {param} ({name})", paths))
        base, bars = tornado_bars(mine, found)
        for block, (centre, frame) in bars.items():
            figures.append((f"Tornado around {base}, {block} ({name})",
                            plots.tornado(frame, centre, block, sensitivity_metric, figures_dir / name,
                                          f"tornado_{slug(block)}", footer)))
    paths = plots.importance(param_importances(runs), figures_dir, footer)
    if paths:
        figures.append(("Hyperparameter importance (search phase, fANOVA)", paths))
    target = gloss_method(scores(runs, metric), gloss) if not runs.runs.empty else None
    figures += _artifact_figures(runs, target, figures_dir, footer)
    return {"tables": tables, "figures": figures, "footer": footer, "problems": runs.problems, "tests": tests}


def write_report(experiments: list[str], tracking_uri: str, out: Path, fmt: str = "md", **options) -> Path:
    runs = load_runs(experiments, tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    built = build(runs, out, **options)
    title = f"G-Loss analysis: {', '.join(experiments)}"
    checks = built["problems"] or ["none: every method has the same seeds, no duplicate or failed runs"]
    if fmt == "html":
        parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Data checks</h2><ul>",
                 *[f"<li>{html.escape(p)}</li>" for p in checks], "</ul>"]
        for table in built["tables"]:
            cells = table.marked(lambda t: f"<b>{t}</b>", lambda t: f"<u>{t}</u>", html.escape)
            parts += [f"<h2>{html.escape(table.caption)}</h2>", cells.to_html(index=False, escape=False),
                      *[f"<p><small>{html.escape(n)}</small></p>" for n in table.notes],
                      f"<p><small><i>{html.escape(table.footer)}</i></small></p>"]
        parts.append("<h2>Figures</h2>")
        for caption, paths in built["figures"]:
            png = base64.b64encode(paths[0].read_bytes()).decode()  # self-contained: the file travels alone
            parts += [f"<h3>{html.escape(caption)}</h3>", f'<img src="data:image/png;base64,{png}" style="max-width:100%">',
                      f'<p><a href="{paths[1].relative_to(out)}">PDF</a></p>']
        path = out / "report.html"
        path.write_text("<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>\n"
                        + "\n".join(parts), encoding="utf-8")
        return path
    parts = [f"# {title}", "", "## Data checks", "", *[f"- {p}" for p in checks], ""]
    for table in built["tables"]:
        parts += [table.markdown(), ""]
    parts += ["## Figures", ""]
    for caption, paths in built["figures"]:
        parts += [f"### {caption}", "", f"![{caption}]({paths[0].relative_to(out)})", "",
                  f"[PDF]({paths[1].relative_to(out)})", "", f"<sub>{built['footer']}</sub>", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
