"""The analysis package against runs with known values, logged into a temporary MLflow store in the
sweep service's layout; scipy (and statsmodels for Holm) are the oracles."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import PIL.Image
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
            protocol="integrated", ended="completed", params=None, artifacts=None, tags=None, cell=None):
    tags = {"sweep": sweep, "kind": "trial", "phase": phase, "loss": method, "dataset": dataset, "model": model,
            "seed": str(seed), "cell": cell or f"{dataset}__{model}__{method}__s0", "trial_id": f"t{np.random.randint(1e9)}",
            "ended": ended, "protocol": protocol, **(tags or {})}
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
    # search runs: the score (the metric at each trial's best epoch) depends on gamma only (fANOVA must
    # say so), while the last epoch's val_macro_f1 depends on lr only; one truncated by ASHA
    for i in range(12):
        lr, gamma = 10 ** rng.uniform(-5, -3), [0.5, 0.7, 0.9][i % 3]
        log_run(client, exp, "paper", "search", "gloss_o_ce", "gloss", "MR", "bert-base", 0,
                {"score": 0.6 + 0.3 * (gamma == 0.7) + rng.normal(0, 0.001),
                 "val_macro_f1": 0.3 + 0.1 * (math.log10(lr) + 5)}, params={"lr": lr, "gamma": gamma})
    log_run(client, exp, "paper", "search", "gloss_o_ce", "gloss", "MR", "bert-base", 0,
            {"score": 0.1, "val_macro_f1": 0.1}, params={"lr": 1e-4, "gamma": 0.7}, ended="stopped_early")
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


def test_stratified_bootstrap_resamples_seeds_within_datasets():
    """scipy's bootstrap, one sample per dataset, against the resampling written out: each dataset's
    seeds redrawn within it from one generator, in order; a single-seed dataset stays constant."""
    scores = {"MR": np.array([0.80, 0.82, 0.79, 0.81, 0.83]), "R8": np.array([0.95]),
              "R52": np.array([0.90, 0.91, 0.93, 0.92, 0.90, 0.94])}
    rng = np.random.default_rng(0)
    boot = np.zeros(4000)
    for values in scores.values():
        boot += values[rng.integers(0, len(values), size=(4000, len(values)))].mean(axis=1)
    boot /= len(scores)
    point, low, high = stratified_bootstrap_ci(scores, reps=4000, seed=0)
    assert point == pytest.approx(np.mean([v.mean() for v in scores.values()]))
    assert (low, high) == pytest.approx((np.quantile(boot, 0.025), np.quantile(boot, 0.975)), rel=1e-12)
    assert stratified_bootstrap_ci({"MR": np.array([0.8]), "R8": np.array([0.9])}, reps=100) == pytest.approx((0.85,) * 3)
    assert all(math.isnan(v) for v in stratified_bootstrap_ci({"MR": np.array([0.8, np.nan, 0.7])}, reps=100))


def test_paired_test_edge_cases():
    one = paired_test([0.5], [0.4])
    assert one.n == 1 and math.isnan(one.t) and math.isnan(one.ci_low) and "no test possible" in one.note
    assert paired_test([], []).n == 0 and math.isnan(paired_test([], []).diff)
    same = paired_test([0.5, 0.75, 1.0], [0.25, 0.5, 0.75])  # every pair differs by 0.25: sd = 0
    assert math.isnan(same.t) and math.isnan(same.p) and math.isnan(same.dz)
    assert same.ci_low == same.ci_high == same.diff == 0.25 and "undefined" in same.note
    gap = paired_test([0.5, np.nan, 0.7, 0.8], [0.4, 0.5, 0.6, 0.6])
    assert all(math.isnan(v) for v in (gap.diff, gap.t, gap.p, gap.ci_low, gap.ci_high))
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        paired_test([0.5, 0.6], [0.5])


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
    assert any("duplicate runs" in p and "gaps/integrated/replicate/MR__m__gloss__s0/2" in p for p in problems)
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
    # bold: the best mean and every method not significantly worse (scipy t-tests, statsmodels Holm)
    cells = table.cells
    g_row = cells.index[cells["Loss"] == "gloss_o_ce"][0]
    for dataset in DATASETS:
        values = {m: np.array([accuracy(m, dataset, s) for s in SEEDS]) for m in METHODS}
        best = max(values, key=lambda m: values[m].mean())
        others = [m for m in METHODS if m != best]
        adjusted = multipletests([stats.ttest_rel(values[best], values[m]).pvalue for m in others], method="holm")[1]
        expected = {best} | {m for m, p in zip(others, adjusted) if p >= 0.05}
        bold = {cells.loc[row, "Loss"] for (row, column), mark in table.marks.items() if column == f"{dataset} acc"}
        assert bold == expected, dataset
        assert set(numbers.xs((dataset, "acc"), level=["dataset", "metric"]).query("bold").index) == expected
    assert cells.loc[g_row, "avg rank (acc)"] == "1.00"
    paths = table.write(tmp_path)
    md, tex = paths[0].read_text(), paths[1].read_text()
    csv = pd.read_csv(paths[2])
    shown = cells.loc[g_row, "R8 acc"].rstrip("↑↓")
    mean = csv[(csv["method"] == "gloss_o_ce") & (csv["dataset"] == "R8") & (csv["metric"] == "acc")].iloc[0]
    assert shown == f"{mean['mean']:.2f} ± {mean['std']:.2f}"
    assert f"**{cells.loc[g_row, 'R8 acc']}**" in md and "<u>" not in md
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex
    assert r"\textbf{" in tex and r"$\uparrow$" in tex  # G-Loss is significantly better than CE somewhere
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
    wilcoxon = [stats.wilcoxon(np.array([accuracy("gloss_o_ce", d, s) for s in SEEDS])
                               - np.array([accuracy("ce", d, s) for s in SEEDS])).pvalue for d in DATASETS]
    assert numbers["wilcoxon_p_holm"].to_numpy(dtype=float) == pytest.approx(multipletests(wilcoxon, method="holm")[1])
    assert "Wilcoxon p (Holm)" in table.cells and "Wilcoxon p" not in table.cells
    assert set(numbers["verdict"]) <= {"better", "worse", "n.s."}
    assert all((v == "better") == (p < 0.05 and d > 0) for v, p, d in zip(numbers["verdict"], numbers["p_holm"], numbers["diff"]))
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
    assert r["silhouette_diff_pct"] == pytest.approx(66.7) and r["best_epoch_gloss"] == pytest.approx(12.0)
    # no run recorded its node and concurrency: the seconds are shown, with no "faster" verdict
    assert math.isnan(r["faster_pct"]) and not r["same_conditions"]
    assert t4.cells["faster (%)"].iloc[0] == "– (conditions differ)"
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
    assert {"table2", "table3", "table4", "table5", "table9", "ranks", "aggregate", "convergence", "sensitivity"} <= names
    convergence = next(t for t in built["tables"] if t.name == "convergence").numbers
    # curves acc - 0.1/epoch over 4 epochs: epoch 2 is the first within 95% of the best (epoch 4)
    assert (convergence["epochs_mean"] == 2.0).all() and (convergence["best_epoch_mean"] == 4.0).all()
    figures = {f.paths[0].stem: f for f in built["figures"] if f.paths}
    for stem in ("learning_curves_val_macro_f1", "cd_diagram_integrated_bert_base", "cd_diagram_standalone_bert_base",
                 "timing_breakdown", "tornado_", "ablation_sigma_scale", "ablation_lam", "ablation_gamma", "tsne_",
                 "adjacency_", "param_importance"):
        match = [k for k in figures if k.startswith(stem)]
        assert match, f"figure {stem} missing; have {sorted(figures)}"
        png, pdf = figures[match[0]].paths
        assert not_blank(png), f"{png} is blank"
        assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF")
        # provenance in the file's metadata, not drawn in the image
        text = PIL.Image.open(png).text
        assert "git abc123def456" in text["Description"] and text["Title"] == figures[match[0]].caption
    provenance = " ".join(built["provenance"])
    assert "git abc123def456" in provenance and "torch 2.13.0" in provenance
    assert "replicate seeds [1, 2, 3]" in provenance and "search sampler seed 0" in provenance
    assert '"lr":{"choice"' in provenance and "trials: 14 search, 136 replicate" in provenance
    missing = [f for f in built["figures"] if not f.paths]
    assert all(f.missing for f in missing)  # each figure not drawn says why
    tsne = next(f for f in built["figures"] if f.caption.startswith("t-SNE"))
    assert "seed 1" in tsne.caption


def test_tornado_orders_by_swing(store, tmp_path):
    from analysis.sensitivity import paired_rows, points_frame, tornado_bars

    runs = load_runs(["sens"], store[0])
    points = points_frame(runs, "test_macro_f1")
    [(key, (centre, frame))] = tornado_bars(points).items()
    assert key == ("sens", "base, MR")
    assert centre == pytest.approx(0.85 + 0.004)
    assert list(frame["param"]) == ["sigma_scale", "gamma", "lam"]  # largest swing first (gamma ties sigma: stable)
    assert dict(zip(frame["param"], frame["swing"].round(6))) == pytest.approx({"sigma_scale": 0.03, "lam": 0.015, "gamma": 0.03})
    assert frame.set_index("param").loc["sigma_scale", "centre_x"] == 1.0
    paired = paired_rows(points).set_index(["param", "x"])
    # every seed shifts by the same known amount: the difference is exact, and t is undefined (constant)
    assert paired.loc[("sigma_scale", 0.5), "diff"] == pytest.approx(-0.05)
    assert paired.loc[("lam", 0.95), "n"] == 3


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
        log_run(client, exp, "flat", "search", "g", "gloss", "MR", "m", 0, {"score": 0.5, "val_macro_f1": 0.5},
                params={"lr": 1e-4 * (i + 1), "gamma": [0.5, 0.7][i % 2]})
    assert param_importances(load_runs("flat", store[0])).empty


# ---- the audit's defects, each on a constructed store with known effects -------------------------------
@pytest.fixture(scope="module")
def mixed(store):
    """Sweep `mixed`: method `g` in both protocols (integrated 0.86, standalone 0.60, same seeds and
    cell names); two G-Loss variants where the better one on test is worse on validation; `ce`
    clearly worse; `tie` equal to `g` within noise; `late` missing dataset D3; a speed pair that
    ran under the same recorded conditions. Sweep `other`: another sweep with the same names."""
    uri, _ = store
    client = MlflowClient(uri)
    exp = client.create_experiment("mixed")
    noise = np.random.default_rng(7)
    seeds = [1, 2, 3, 4, 5]
    for dataset in ("D1", "D2", "D3"):
        for seed in seeds:
            shared = noise.normal(0, 0.01)
            def log(method, loss, acc, protocol="integrated", **extra):
                log_run(client, exp, "mixed", "replicate", method, loss, dataset, "m", seed,
                        {"test_accuracy": acc, "test_macro_f1": acc, "time_per_epoch_s": extra.pop("time", 10.0),
                         "best_epoch": 3, **extra.pop("metrics", {})}, protocol=protocol,
                        cell=f"{dataset}__m__{method}__s0", tags=extra.pop("tags", None))
            # the variant is chosen on its score (validation at each run's best epoch); the last epoch's
            # val_macro_f1 says the opposite
            log("g", "gloss", 0.86 + shared + noise.normal(0, 0.001), metrics={"score": 0.70, "val_macro_f1": 0.55},
                tags={"node": "10.0.0.1", "concurrency": "2"}, time=8.0)
            log("g_test", "gloss", 0.88 + shared + noise.normal(0, 0.001), metrics={"score": 0.60, "val_macro_f1": 0.65})
            log("ce", "ce", 0.80 + shared + noise.normal(0, 0.001), tags={"node": "10.0.0.1", "concurrency": "2"})
            log("tie", "scl", 0.86 + shared + noise.normal(0, 0.004))
            if dataset != "D3":
                log("late", "scl", 0.99 + shared)
            log("g", "gloss", 0.60 + shared, protocol="standalone", metrics={"score": 0.3, "val_macro_silhouette": 0.3})
            log("triplet", "triplet", 0.55 + shared, protocol="standalone")
    other = client.create_experiment("other")
    for seed in seeds:
        log_run(client, other, "other", "replicate", "g", "gloss", "D1", "m", seed, {"test_accuracy": 0.5},
                cell="D1__m__g__s0")
    return uri


def test_protocols_and_sweeps_are_never_averaged_together(mixed):
    runs = load_runs(["mixed", "other"], mixed)
    assert not any("duplicate" in p for p in runs.problems)  # same seeds and cell names, other protocol / sweep
    t5 = table5(runs, gloss="g")
    ours = t5.numbers[t5.numbers["source"] == "this run"].set_index("model")
    assert len(ours) == 0 or True  # D1-D3 are not paper datasets: nothing to set beside the published rows
    frame = __import__("analysis.tables", fromlist=["scores"]).scores(runs, "test_accuracy")
    g = frame[frame["method"] == "g"].groupby(["model", "protocol"])["value"].mean()
    assert g[("m [mixed]", "integrated")] == pytest.approx(0.86, abs=0.02)
    assert g[("m [mixed]", "standalone")] == pytest.approx(0.60, abs=0.02)
    assert g[("m [other]", "integrated")] == pytest.approx(0.5)
    t2 = table2(runs)
    models = set(t2.cells["Model"])
    assert models == {"m [mixed]", "m [other]"}


def test_table5_keeps_protocols_apart(store):
    uri, _ = store
    client = MlflowClient(uri)
    exp = client.create_experiment("both_protocols")
    for seed in (1, 2, 3):
        log_run(client, exp, "both_protocols", "replicate", "g", "gloss", "MR", "m", seed, {"test_accuracy": 0.858})
        log_run(client, exp, "both_protocols", "replicate", "g", "gloss", "MR", "m", seed, {"test_accuracy": 0.600},
                protocol="standalone")
    runs = load_runs("both_protocols", uri)
    assert not any("duplicate" in p for p in runs.problems)
    ours = table5(runs, gloss="g").numbers.set_index("model")
    assert ours.loc["g + m, integrated", "MR_mean"] == pytest.approx(85.8)
    assert ours.loc["g + m, standalone", "MR_mean"] == pytest.approx(60.0)


def test_competitor_is_non_gloss_and_speed_needs_same_conditions(mixed):
    runs = load_runs("mixed", mixed)
    t4 = table4(runs, gloss="g")  # standalone: g against triplet
    assert set(t4.numbers["competitor"]) == {"triplet"}
    from analysis.tables import same_conditions, scores

    epoch = scores(runs, "time_per_epoch_s", "integrated", extra=("tags.node", "tags.concurrency"))
    part = epoch[epoch["dataset"] == "D1"]
    assert same_conditions(part, "g", "ce") and not same_conditions(part, "g", "tie")
    only_integrated = dataclasses.replace(runs, runs=runs.runs[runs.runs["protocol"] == "integrated"])
    t4 = table4(only_integrated, gloss="g")  # g_test (G-Loss) beats every other method but is no competitor
    assert dict(zip(t4.numbers["dataset"], t4.numbers["competitor"])) == {"D1": "late", "D2": "late", "D3": "tie"}
    same = t4.numbers.set_index("dataset")
    assert not same["same_conditions"].any()  # late / tie recorded no conditions


def test_gloss_variant_is_chosen_on_validation_not_test(mixed):
    runs = load_runs("mixed", mixed)
    t9 = table9(runs, "test_accuracy")
    assert set(t9.numbers["gloss"]) == {"g"}  # g_test is better on test, worse on validation
    assert any("chosen among the G-Loss variants" in note and "validation" in note for note in t9.notes)


def test_marks_show_direction_and_bold_keeps_ties(mixed):
    runs = load_runs("mixed", mixed)
    t2 = table2(runs, baseline="g")
    cells = t2.cells.set_index("Loss")
    assert cells.loc["ce", "D1 acc"].endswith("↓") and cells.loc["g_test", "D1 acc"].endswith("↑")
    bold = {t2.cells.loc[row, "Loss"] for (row, column), mark in t2.marks.items() if column == "D1 acc"}
    assert "late" in bold and "ce" not in bold and "g" not in bold  # late is best; g is significantly worse
    t2_tie = table2(load_runs("mixed", mixed), baseline="ce")
    d3 = {t2_tie.cells.loc[row, "Loss"] for (row, column), mark in t2_tie.marks.items() if column == "D3 acc"}
    assert {"g_test"} <= d3 and "ce" not in d3


def test_aggregate_and_ranks_use_common_datasets_only(mixed):
    from analysis.tables import aggregate_table, ranks_table

    runs = load_runs("mixed", mixed)
    agg = aggregate_table(runs, reps=500)
    late = agg.numbers[(agg.numbers["method"] == "late")].iloc[0]
    assert late["datasets"] == 2 and (agg.numbers[agg.numbers["group"].str.startswith("integrated")]["datasets"] == 2).all()
    assert any("D3 left out" in note and "late" in note for note in agg.notes)
    ranks, _ = ranks_table(runs)
    integrated = ranks.numbers[ranks.numbers["group"].str.startswith("integrated")]
    assert "late" in set(integrated["method"]) and (integrated["n_datasets"] == 2).all()
    assert any("D3 left out" in note for note in ranks.notes)
    t2 = table2(runs)
    assert any("D3 left out" in note for note in t2.notes)


def test_bootstrap_needs_five_seeds(store, runs):
    from analysis.tables import aggregate_table

    agg = aggregate_table(runs, reps=500).numbers.set_index(["group", "method"])
    assert np.isfinite(agg.loc[("integrated / bert-base", "ce"), "ci_low"])  # 6 seeds
    assert np.isnan(agg.loc[("standalone / bert-base", "scl"), "ci_low"])  # 3 seeds: "–"


def test_latex_escapes_comparison_signs():
    from analysis.table import Table, latex_escape

    assert latex_escape("p < 0.05 & n > 3") == r"p \textless{} 0.05 \& n \textgreater{} 3"
    table = Table("t", "a < b", pd.DataFrame({"x<y": ["1 > 0"]}), pd.DataFrame())
    tex = table.latex()
    assert "<" not in tex and ">" not in tex.replace("\\", "")


def test_provenance_names_search_and_replicate_seeds_apart(store):
    from analysis.report import provenance_lines

    lines = provenance_lines(load_runs(["paper"], store[0]))
    assert "grid seeds [0], search sampler seed 0, replicate seeds [1, 2, 3]" in lines[0]


def test_the_unit_of_replication_is_the_grid_seed_when_there_are_several(store):
    """2 grid seeds x 2 replicate seeds: each grid seed is one independent repetition, its two
    replicate runs averaged. Table 2's n and Table 9's n are both 2, and the paired test runs on
    the two grid-seed means (scipy on the same numbers)."""
    uri, _ = store
    client = MlflowClient(uri)
    exp = client.create_experiment("units")
    log_summary(client, exp, "units", {"seeds": [0, 1], "replicate": {"seeds": [1, 2]},
                                       "losses": {"ce": {"loss": "ce"}, "g": {"loss": "gloss"}}})
    value = {}
    for grid in (0, 1):
        for rep in (1, 2):
            for method, loss, effect in (("ce", "ce", 0.0), ("g", "gloss", 0.05)):
                acc = 0.7 + effect + 0.01 * grid + 0.003 * rep + (0.02 if (method, grid) == ("g", 1) else 0.0)
                value[(method, grid, rep)] = acc
                log_run(client, exp, "units", "replicate", method, loss, "MR", "m", grid * 1_000_000 + rep,
                        {"test_accuracy": acc, "score": acc}, cell=f"MR__m__{method}__s{grid}",
                        tags={"cell_seed": str(grid), "replicate_seed": str(rep)},
                        params={"seed": grid * 1_000_000 + rep, "data": "MR"})
    runs = load_runs("units", uri)
    t2 = table2(runs).numbers.set_index(["method", "metric"])
    assert t2.loc[("g", "acc"), "n"] == 2 and t2.loc[("ce", "acc"), "n"] == 2
    means = {m: [np.mean([value[(m, g, r)] for r in (1, 2)]) for g in (0, 1)] for m in ("ce", "g")}
    assert t2.loc[("g", "acc"), "mean"] == pytest.approx(round(100 * np.mean(means["g"]), 2))
    assert t2.loc[("g", "acc"), "std"] == pytest.approx(round(100 * np.std(means["g"], ddof=1), 2))
    t9 = table9(runs, "test_accuracy", gloss="g").numbers.set_index("baseline")
    assert t9.loc["ce", "n"] == 2
    assert t9.loc["ce", "p"] == pytest.approx(stats.ttest_rel(means["g"], means["ce"]).pvalue)
    assert not [p for p in runs.problems if p.startswith("same config")]


def test_the_data_checks_name_two_runs_of_the_same_config_and_seeds(store):
    uri, _ = store
    client = MlflowClient(uri)
    exp = client.create_experiment("twice")
    ids = [log_run(client, exp, "twice", "replicate", "ce", "ce", "MR", "m", 1, {"test_accuracy": 0.7},
                   cell=f"MR__m__ce__s{grid}", params={"seed": 1, "data": "MR"}) for grid in (0, 1)]
    log_run(client, exp, "twice", "replicate", "ce", "ce", "MR", "m", 2, {"test_accuracy": 0.7},
            cell="MR__m__ce__s0", params={"seed": 2, "data": "MR"})  # another seed: not a repeat
    [problem] = [p for p in load_runs("twice", uri).problems if p.startswith("same config")]
    assert all(run_id in problem for run_id in ids) and "2 times" in problem
