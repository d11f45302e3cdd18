"""The analysis package against runs with known values, logged into a temporary MLflow store in the
sweep service's layout; scipy (and statsmodels for Holm) are the oracles."""

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analysis.load import load_runs
from analysis.report import build
from analysis.stats import friedman_nemenyi, holm, min_wilcoxon_p, nemenyi_q, paired_test, stratified_bootstrap_ci
from analysis.tables import table2, table3, table4, table5, table9

GLOSS = str(Path(sys.executable).with_name("gloss"))
DATASETS = ["MR", "R8", "R52", "ohsumed", "20ng"]
SEEDS = [1, 2, 3, 4, 5, 6]
METHODS = {"ce": "ce", "scl_ce": "scl", "gloss_o_ce": "gloss"}
OFFSET = {"ce": 0.0, "scl_ce": 0.004, "gloss_o_ce": 0.009}


def accuracy(method: str, dataset: str, seed: int) -> float:
    """Known, seed-paired values: a dataset level, a method offset, seed noise."""
    level = 0.70 + 0.05 * DATASETS.index(dataset)
    shared = np.random.default_rng(1000 * seed + DATASETS.index(dataset)).normal(0, 0.004)
    own = np.random.default_rng(10000 * seed + 100 * DATASETS.index(dataset) + list(METHODS).index(method)).normal(0, 0.002)
    return round(level + OFFSET[method] + shared + own, 6)


def log_run(client, exp_id, sweep, phase, method, loss, dataset, model, seed, metrics, history=None,
            protocol="integrated", ended="completed", params=None, artifacts=None):
    tags = {"sweep": sweep, "kind": "trial", "phase": phase, "loss": method, "dataset": dataset, "model": model,
            "seed": str(seed), "cell": f"{dataset}__{model}__{method}__s0", "trial_id": f"t{np.random.randint(1e9)}",
            "ended": ended, "protocol": protocol}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    values = {"loss": loss, "protocol": protocol, "seed": seed, "lr": 3e-5, **(params or {})}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in values.items()])
    batch = [Metric(k, v, 0, int(metrics.get("epochs_run", 1))) for k, v in metrics.items()]
    for key, series in (history or {}).items():
        batch += [Metric(key, v, 0, step) for step, v in enumerate(series, start=1)]
    client.log_batch(run_id, metrics=batch)
    for name, array in (artifacts or {}).items():
        folder = Path(client.tracking_uri.removeprefix("sqlite:///")).parent / f"art-{run_id}"
        folder.mkdir(exist_ok=True)
        np.save(folder / name, array)
        client.log_artifact(run_id, str(folder / name), "artifacts")
    client.set_terminated(run_id, "FAILED" if ended == "failed" else "FINISHED")
    return run_id


def log_summary(client, exp_id, sweep, spec):
    """The sweep's summary run with its spec as the runner records it (validated, then dumped)."""
    from sweeps.spec import SweepSpec

    full = SweepSpec.model_validate({"name": sweep, "datasets": ["MR"], "models": {"bert-base": {"model": "bert-base"}},
                                     **spec})
    run_id = client.create_run(exp_id, tags={"sweep": sweep, "kind": "summary", "phase": "summary",
                                             "git_commit": "abc123def456",
                                             "package_versions": json.dumps({"torch": "2.13.0"})}).info.run_id
    client.log_dict(run_id, full.model_dump(mode="json", by_alias=True), "spec.json")
    client.set_terminated(run_id)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Sweep `paper`: integrated (3 methods x 5 datasets x 6 seeds, curves, timing) and standalone
    runs; sweep `sens`: one-factor families for the tornado and ablation; one run with artifacts."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("paper", artifact_location=str(folder / "artifacts"))
    space = {"lr": {"loguniform": [1e-5, 1e-3]}, "gamma": {"choice": [0.5, 0.7, 0.9]}}
    log_summary(client, exp, "paper", {"losses": {"ce": {"loss": "ce", "space": {"lr": {"choice": [1e-5, 2e-5]}}},
                                                  "gloss_o_ce": {"loss": "gloss", "space": space}},
                                       "search": {"num_samples": 4}, "asha": {"max_t": 5}, "metric": "val_macro_f1"})
    rng = np.random.default_rng(0)
    for dataset in DATASETS:
        for method, loss in METHODS.items():
            for seed in SEEDS:
                acc = accuracy(method, dataset, seed)
                curve = [acc - 0.1 / e for e in range(1, 5)]
                log_run(client, exp, "paper", "replicate", method, loss, dataset, "bert-base", seed,
                        {"test_accuracy": acc, "test_macro_f1": acc - 0.02, "epochs_run": 4, "best_epoch": 4,
                         "time_per_epoch_s": 10.0 + OFFSET[method] * 100},
                        history={"val_macro_f1": curve, "time_forward_s": [1.0] * 4, "time_loss_s": [0.1] * 4,
                                 "time_backward_s": [2.0] * 4})
        # standalone protocol, 3 seeds, the silhouettes and times of Tables 3-4
        sl = {"gloss_o": "gloss", "scl": "scl", "triplet": "triplet"}
        for method, loss in sl.items():
            for seed in SEEDS[:3]:
                log_run(client, exp, "paper", "replicate", method, loss, dataset, "bert-base", seed,
                        {"test_accuracy": 0.8 + 0.01 * list(sl).index(method) + 0.001 * seed,
                         "test_macro_f1": 0.75 + 0.001 * seed,
                         "test_macro_silhouette": 0.5 - 0.1 * list(sl).index(method),
                         "time_per_epoch_s": 20.0 + 5 * list(sl).index(method),
                         "total_time_s": 500.0 + seed, "best_epoch": 10 + seed, "epochs_run": 12},
                        protocol="standalone")
    # search runs: the score depends on gamma only (fANOVA must say so); one truncated by ASHA
    for i in range(12):
        lr, gamma = 10 ** rng.uniform(-5, -3), [0.5, 0.7, 0.9][i % 3]
        log_run(client, exp, "paper", "search", "gloss_o_ce", "gloss", "MR", "bert-base", 0,
                {"val_macro_f1": 0.6 + 0.3 * (gamma == 0.7) + rng.normal(0, 0.001)}, params={"lr": lr, "gamma": gamma})
    log_run(client, exp, "paper", "search", "gloss_o_ce", "gloss", "MR", "bert-base", 0, {"val_macro_f1": 0.1},
            params={"lr": 1e-4, "gamma": 0.7}, ended="stopped_early")
    # a failed run: counted in the footer and the checks, never in the tables
    log_run(client, exp, "paper", "search", "ce", "ce", "MR", "bert-base", 0, {"val_macro_f1": 0.5})
    log_run(client, exp, "paper", "replicate", "ce", "ce", "MR", "bert-base", 9, {}, ended="failed")

    sens = client.create_experiment("sens", artifact_location=str(folder / "artifacts-sens"))
    variants = {"base": {}, "sigma_lo": {"sigma_scale": 0.5}, "sigma_hi": {"sigma_scale": 1.5},
                "lam_lo": {"lam": 0.7}, "lam_hi": {"lam": 0.95}, "gamma_lo": {"gamma": 0.5}, "gamma_hi": {"gamma": 0.9}}
    spec = {"losses": {n: {"loss": "gloss", "space": {}, "fixed": {"sigma": 2.0, "lam": 0.8, "gamma": 0.7,
                                                                   "sigma_scale": 1.0, **v}} for n, v in variants.items()}}
    log_summary(client, sens, "sens", spec)
    effect = {"base": 0.0, "sigma_lo": -0.05, "sigma_hi": -0.02, "lam_lo": -0.01, "lam_hi": 0.005,
              "gamma_lo": -0.02, "gamma_hi": 0.01}
    for name, delta in effect.items():
        for seed in SEEDS[:3]:
            arts = None
            if name == "base" and seed == 1:
                emb = np.concatenate([rng.normal(0, 1, (20, 8)), rng.normal(4, 1, (20, 8))])
                arts = {"test_embeddings.npy": emb, "test_labels.npy": np.repeat([0, 1], 20),
                        "adjacency_labels.npy": np.repeat([0, 1], 4),
                        **{f"adjacency_epoch{e:03d}.npy": rng.uniform(0, 1, (8, 8)) for e in (1, 2, 3)}}
            log_run(client, sens, "sens", "replicate", name, "gloss", "MR", "bert-base", seed,
                    {"test_macro_f1": 0.85 + delta + 0.002 * seed, "test_accuracy": 0.86 + delta},
                    params={"sigma_scale": spec["losses"][name]["fixed"]["sigma_scale"]}, artifacts=arts)
    return uri, folder


@pytest.fixture(scope="module")
def runs(store):
    return load_runs(["paper"], store[0])


# ---- statistics against scipy / statsmodels -------------------------------------------------------
def test_paired_test_matches_scipy_and_hand_formulas():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.86, 0.01, 7), rng.normal(0.85, 0.01, 7)
    r = paired_test(a, b)
    t, p = stats.ttest_rel(a, b)
    d = a - b
    assert r.n == 7 and r.t == pytest.approx(t) and r.p == pytest.approx(p)
    assert r.dz == pytest.approx(d.mean() / d.std(ddof=1))
    half = stats.t.ppf(0.975, 6) * d.std(ddof=1) / math.sqrt(7)
    assert (r.ci_low, r.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert r.wilcoxon_p == pytest.approx(stats.wilcoxon(d).pvalue)
    assert r.p_better == pytest.approx(np.mean(d > 0))
    small = paired_test(a[:5], b[:5])
    assert small.wilcoxon_p is None and "0.0625" in small.note


def test_small_sample_limits_match_exact_tests():
    for n in (3, 4, 5, 6, 10):
        assert min_wilcoxon_p(n) == pytest.approx(stats.wilcoxon(np.arange(1.0, n + 1)).pvalue)
    assert nemenyi_q(3) == pytest.approx(2.343, abs=1e-3) and nemenyi_q(4) == pytest.approx(2.569, abs=1e-3)
    assert nemenyi_q(5) == pytest.approx(2.728, abs=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_statsmodels(seed):
    p = np.random.default_rng(seed).uniform(0, 0.2, 7)
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = np.append(p, np.nan)
    assert np.isnan(holm(with_nan)[-1]) and holm(with_nan)[:-1] == pytest.approx(holm(p))


def test_friedman_nemenyi_matches_scipy_and_hand_ranks():
    scores = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.95, 0.6], "b": [0.85, 0.82, 0.65, 0.9, 0.55],
                           "c": [0.8, 0.7, 0.6, 0.85, 0.5]}, index=DATASETS)
    r = friedman_nemenyi(scores)
    chi2, p = stats.friedmanchisquare(scores["a"], scores["b"], scores["c"])
    assert r.friedman_p == pytest.approx(p) and r.friedman_chi2 == pytest.approx(chi2)
    assert r.ranks.to_dict() == pytest.approx({"a": 1.2, "b": 1.8, "c": 3.0})
    assert r.cd == pytest.approx(2.343 * math.sqrt(3 * 4 / 30), abs=1e-3)
    assert r.differs("a", "c") and not r.differs("a", "b")
    two = friedman_nemenyi(scores[["a", "b"]])
    assert any("Wilcoxon" in note for note in two.notes)


def test_bootstrap_ci_agrees_with_scipy():
    values = np.random.default_rng(1).normal(0.8, 0.02, 12)
    point, low, high = stratified_bootstrap_ci({"one dataset": values}, reps=20000)
    ref = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=20000, rng=np.random.default_rng(2))
    assert point == pytest.approx(values.mean())
    assert low == pytest.approx(ref.confidence_interval.low, abs=2e-3)
    assert high == pytest.approx(ref.confidence_interval.high, abs=2e-3)


# ---- loader and checks ----------------------------------------------------------------------------
def test_loader_gives_a_tidy_frame_and_flags_problems(store, runs):
    tidy = runs.tidy
    for column in ("method", "dataset", "model", "seed", "phase", "metric", "value", "epoch", "run_id"):
        assert column in tidy
    acc = runs.final("test_accuracy")
    integrated = acc[acc["params.protocol"] == "integrated"]
    assert len(integrated) == len(DATASETS) * len(METHODS) * len(SEEDS)
    curve = runs.history("val_macro_f1")
    assert sorted(curve["epoch"].unique()) == [1, 2, 3, 4]
    assert any("failed runs: 1" in p for p in runs.problems)
    assert runs.sweeps["paper"].git_commit == "abc123def456"

    uri, _ = store
    client = MlflowClient(uri)
    exp = client.create_experiment("gaps")
    for seed in (1, 2, 3):
        log_run(client, exp, "gaps", "replicate", "ce", "ce", "MR", "m", seed, {"test_accuracy": 0.5})
    for seed in (1, 2, 2):
        log_run(client, exp, "gaps", "replicate", "gloss", "gloss", "MR", "m", seed, {"test_accuracy": 0.6})
    problems = load_runs("gaps", uri).problems
    assert any("missing seeds" in p and "gloss" in p and "[3]" in p for p in problems)
    assert any("duplicate runs" in p and "gaps/gloss/MR/m/2" in p for p in problems)
    with pytest.raises(LookupError, match="no experiment 'nope'.*paper"):
        load_runs("nope", uri)


# ---- tables -------------------------------------------------------------------------------------
def test_table2_numbers_marks_and_formats(runs, tmp_path):
    table = table2(runs, baseline="ce")
    numbers = table.numbers.set_index(["method", "dataset", "metric"])
    for dataset in DATASETS:
        for method in METHODS:
            values = np.array([accuracy(method, dataset, s) for s in SEEDS]) * 100
            row = numbers.loc[(method, dataset, "acc")]
            assert row["mean"] == pytest.approx(round(values.mean(), 2))
            assert row["std"] == pytest.approx(round(values.std(ddof=1), 2))
            assert row["n"] == 6
        # significance vs CE: Holm over datasets of scipy's paired t-test
        ps = [stats.ttest_rel([accuracy("gloss_o_ce", d, s) for s in SEEDS], [accuracy("ce", d, s) for s in SEEDS]).pvalue
              for d in DATASETS]
        expected = multipletests(ps, method="holm")[1][DATASETS.index(dataset)]
        assert numbers.loc[("gloss_o_ce", dataset, "acc")]["p_holm_vs_baseline"] == pytest.approx(expected)
    # G-Loss has the best mean everywhere: bold; SCL second: underlined
    cells = table.cells
    g_row = cells.index[cells["Loss"] == "gloss_o_ce"][0]
    s_row = cells.index[cells["Loss"] == "scl_ce"][0]
    assert table.marks[(g_row, "MR acc")] == "best" and table.marks[(s_row, "MR acc")] == "second"
    assert cells.loc[g_row, "avg rank (acc)"] == "1.00"
    paths = table.write(tmp_path)
    md, tex = paths[0].read_text(), paths[1].read_text()
    csv = pd.read_csv(paths[2])
    shown = cells.loc[g_row, "R8 acc"].rstrip("†")
    mean = csv[(csv["method"] == "gloss_o_ce") & (csv["dataset"] == "R8") & (csv["metric"] == "acc")].iloc[0]
    assert shown == f"{mean['mean']:.2f} ± {mean['std']:.2f}"
    assert f"**{cells.loc[g_row, 'R8 acc']}**" in md and "<u>" in md
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex
    assert r"\textbf{" in tex and r"\underline{" in tex
    assert "n seeds" in table.notes[0] and cells.loc[g_row, "n"] == "6"


def test_table9_paired_tests_match_scipy(runs):
    table = table9(runs, "test_accuracy", gloss="gloss_o_ce")
    numbers = table.numbers[table.numbers["baseline"] == "ce"].set_index("dataset")
    ps = []
    for dataset in DATASETS:
        a = np.array([accuracy("gloss_o_ce", dataset, s) for s in SEEDS])
        b = np.array([accuracy("ce", dataset, s) for s in SEEDS])
        t, p = stats.ttest_rel(a, b)
        ps.append(p)
        row = numbers.loc[f"{dataset} / integrated"]
        assert row["p"] == pytest.approx(p) and row["t"] == pytest.approx(round(t, 3))
        assert row["d_z"] == pytest.approx(round((a - b).mean() / (a - b).std(ddof=1), 2))
        assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert numbers["p_holm"].to_numpy() == pytest.approx(multipletests(ps, method="holm")[1])
    assert all(s == ("***" if p < 1e-3 else "**" if p < 1e-2 else "*" if p < 0.05 else "")
               for s, p in zip(numbers["stars"], numbers["p_holm"]))


def test_tables_3_4_5(runs):
    t3 = table3(runs)
    row = t3.numbers[(t3.numbers["dataset"] == "MR") & (t3.numbers["method"] == "gloss_o")].iloc[0]
    assert row["test_macro_silhouette_mean"] == pytest.approx(0.5) and row["time_per_epoch_s_mean"] == 20.0
    assert row["best_epoch_mean"] == pytest.approx(12.0) and row["n"] == 3
    t4 = table4(runs)  # G-Loss (gloss_o) against the best other standalone method by accuracy: triplet
    r = t4.numbers.iloc[0]
    assert r["competitor"] == "triplet" and r["silhouette_gloss"] == 0.5 and r["silhouette_competitor"] == pytest.approx(0.3)
    assert r["silhouette_diff_pct"] == pytest.approx(66.7) and r["faster_pct"] == pytest.approx(33.3)
    t5 = table5(runs, gloss="gloss_o_ce")
    published = t5.numbers.set_index("model")
    assert published.loc["TextGCN", "MR_mean"] == 76.74 and published.loc["G-Loss + RoBERTa-large", "Ohsumed_mean"] == 75.76
    ours = published.loc["gloss_o_ce + bert-base"]
    assert ours["Ohsumed_mean"] == pytest.approx(round(100 * np.mean([accuracy("gloss_o_ce", "ohsumed", s) for s in SEEDS]), 2))


# ---- figures and the report ------------------------------------------------------------------------
def not_blank(path: Path) -> bool:
    image = matplotlib.image.imread(path)[..., :3]
    return image.std() > 0.05 and (image.mean(axis=2) < 0.9).mean() > 0.01


def test_report_writes_every_table_and_figure(store, tmp_path):
    uri, _ = store
    built = build(load_runs(["paper", "sens"], uri), tmp_path, gloss=None)
    names = {t.name for t in built["tables"]}
    assert {"table2", "table3", "table4", "table5", "table9", "ranks", "aggregate", "convergence"} <= names
    convergence = next(t for t in built["tables"] if t.name == "convergence").numbers
    # curves acc - 0.1/epoch over 4 epochs: epoch 2 is the first within 95% of the best (epoch 4)
    assert (convergence["epochs_mean"] == 2.0).all() and (convergence["best_epoch_mean"] == 4.0).all()
    figures = {p[0].stem: p for _, p in built["figures"]}
    for stem in ("learning_curves_val_macro_f1", "cd_diagram_integrated_bert_base", "cd_diagram_standalone_bert_base",
                 "timing_breakdown", "tornado_", "ablation_sigma_scale", "ablation_lam", "ablation_gamma", "tsne_",
                 "adjacency_", "param_importance"):
        match = [k for k in figures if k.startswith(stem)]
        assert match, f"figure {stem} missing; have {sorted(figures)}"
        png, pdf = figures[match[0]]
        assert not_blank(png), f"{png} is blank"
        assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF")
    assert "git abc123def456" in built["footer"] and "torch 2.13.0" in built["footer"]
    assert "seeds [1, 2, 3, 4, 5, 6, 9]" in built["footer"] or "seeds [0, 1, 2, 3, 4, 5, 6, 9]" in built["footer"]
    assert '"lr":{"choice"' in built["footer"] and "12 search" not in built["footer"]
    assert "trials: 14 search" in built["footer"]


def test_tornado_orders_by_swing(store, tmp_path):
    from analysis.sensitivity import families, tornado_bars
    from analysis.tables import scores

    runs = load_runs(["sens"], store[0])
    found = families(runs.sweeps["sens"].spec)
    assert set(found) == {"sigma_scale", "lam", "gamma"}
    base, bars = tornado_bars(scores(runs, "test_macro_f1"), found)
    assert base == "base"
    centre, frame = bars["MR"]
    assert centre == pytest.approx(0.85 + 0.004)
    swing = (frame["high_mean"] - frame["low_mean"]).abs()
    assert dict(zip(frame["param"], swing.round(6))) == pytest.approx({"sigma_scale": 0.03, "lam": 0.015, "gamma": 0.03})


def test_cli_report_and_errors(store, tmp_path):
    uri, _ = store
    out = tmp_path / "report"
    done = subprocess.run([GLOSS, "analyze", "report", "--experiment", "paper", "--tracking-uri", uri, "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (out / "report.md").read_text()
    assert "Table 2" in text and "Table 9" in text and "![" in text and "failed runs" in text
    for link in [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (out / link).is_file()
    html = subprocess.run([GLOSS, "analyze", "report", "-e", "paper", "--tracking-uri", uri, "--out", str(out),
                           "--format", "html"], capture_output=True, text=True)
    assert html.returncode == 0 and '<img src="data:image/png;base64,' in (out / "report.html").read_text()
    bad = subprocess.run([GLOSS, "analyze", "report", "-e", "missing", "--tracking-uri", uri, "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no experiment 'missing'" in bad.stdout


def test_param_importance_uses_full_budget_trials_only(runs):
    from analysis.importance import param_importances

    scores = param_importances(runs).set_index("param")
    assert set(scores.index) == {"lr", "gamma"} and (scores["trials"] == 12).all()
    assert scores.loc["gamma", "importance"] > 0.8 > scores.loc["lr", "importance"]


def test_param_importance_skips_cells_without_variance(store):
    from analysis.importance import param_importances

    client = MlflowClient(store[0])
    exp = client.create_experiment("flat")
    log_summary(client, exp, "flat", {"losses": {"g": {"loss": "gloss", "space": {
        "lr": {"loguniform": [1e-5, 1e-3]}, "gamma": {"choice": [0.5, 0.7]}}}}, "metric": "val_macro_f1"})
    for i in range(6):
        log_run(client, exp, "flat", "search", "g", "gloss", "MR", "m", 0, {"val_macro_f1": 0.5},
                params={"lr": 1e-4 * (i + 1), "gamma": [0.5, 0.7][i % 2]})
    assert param_importances(load_runs("flat", store[0])).empty
