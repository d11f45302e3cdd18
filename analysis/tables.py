"""The paper's tables from replicate runs (test metrics over seeds, from the best config per cell).

- table2: integrated protocol; accuracy / macro-F1 mean ± std per model x method x dataset; bold:
  the best and every method not significantly worse than it; ↑ / ↓ significantly better / worse
  than a baseline; n; average rank over the datasets every method covers.
- table3: standalone protocol; accuracy, macro-F1, silhouette, total time, time per epoch, epochs.
- table4: G-Loss against its closest non-G-Loss competitor: silhouette, epoch of the best, time
  per epoch (a "faster" verdict only between runs under the same conditions).
- table5: ours beside the published numbers (analysis/data/paper_table5.csv).
- table9: G-Loss against every other method: paired t-tests with stars, per dataset.
- ranks: Friedman + Nemenyi across datasets; aggregate: mean over datasets with bootstrap CIs
  (n >= 5 seeds). Both use only the datasets every compared method covers.

Every number is grouped by sweep and protocol: with several sweeps, a model's label carries its
sweep ("bert-base [table2]"), and a block names its protocol when protocols differ. The G-Loss
variant compared (Tables 4, 5, 9) is chosen on validation, never on test, unless `gloss` names it.
- convergence: epochs until the validation metric first reaches 95% of the run's best.

Std is the sample std (ddof = 1); n is the number of seeds.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pandas as pd

from analysis.load import Runs, dedupe
from analysis.stats import ALPHA, STAR_LEGEND, friedman_nemenyi, holm, paired_test, stars, stratified_bootstrap_ci
from analysis.table import Table, fmt, pm
from gloss_core.spread import mean_std
from sweeps.spec import DEFAULT_METRIC

MIN_BOOTSTRAP_SEEDS = 5  # percentile bootstraps of fewer seeds only restate the observed values

PAPER_DATASETS = {"mr": "MR", "r8": "R8", "r52": "R52", "ohsumed": "Ohsumed", "20ng": "20NG"}
KEYS = ["sweep", "protocol", "dataset", "model", "method", "loss", "seed"]


def scores(runs: Runs, metric: str, protocol: str | None = None, phase: str = "replicate",
           extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Final `metric` of completed runs of a phase, one per (sweep, protocol, cell, seed). With
    several sweeps the model's label names its sweep, so no number mixes two sweeps."""
    frame = dedupe(runs.final(metric, phase=phase))
    if protocol is not None:
        frame = frame[frame["protocol"] == protocol]
    frame = frame.reindex(columns=KEYS + ["value", *extra]).copy()
    if runs.runs.get("sweep", pd.Series(dtype=str)).nunique() > 1:
        frame["model"] = frame["model"].astype(str) + " [" + frame["sweep"].astype(str) + "]"
    frame["block"] = block_labels(frame)
    return in_paper_order(frame)


LOSS_ORDER = {"ce": 0, "scl": 1, "triplet": 2, "cosine": 3, "gloss": 4}


def in_paper_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by dataset in the paper's order (others alphabetically after), then model, then method
    (CE, SCL, triplet, cosine, G-Loss variants), then seed: tables list things in this order."""
    known = list(PAPER_DATASETS)
    dataset_rank = frame["dataset"].map(lambda d: (known.index(d.lower()), "") if d.lower() in known else (len(known), d))
    loss_rank = frame["loss"].map(lambda loss: LOSS_ORDER.get(loss, len(LOSS_ORDER)))
    order = sorted(range(len(frame)), key=lambda i: (frame["protocol"].iloc[i], dataset_rank.iloc[i], frame["model"].iloc[i],
                                                     loss_rank.iloc[i], frame["method"].iloc[i], frame["seed"].iloc[i]))
    return frame.iloc[order].reset_index(drop=True)


def block_labels(frame: pd.DataFrame) -> pd.Series:
    """The unit of comparison: the dataset, with the model and protocol when those vary."""
    parts = [frame["dataset"].astype(str)]
    for key in ("model", "protocol"):
        if frame[key].nunique() > 1:
            parts.append(frame[key].astype(str))
    label = parts[0]
    for part in parts[1:]:
        label = label + " / " + part
    return label


def validation_scores(runs: Runs) -> pd.DataFrame:
    """Each replicate run's validation selection metric at its best epoch (val_macro_f1, or
    val_macro_silhouette in the standalone protocol): what a variant may be chosen on."""
    parts = [scores(runs, metric, proto) for proto, metric in DEFAULT_METRIC.items()]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=KEYS + ["value", "block"])


def gloss_method(frame: pd.DataFrame, preferred: str | None = None, runs: Runs | None = None) -> str | None:
    """The G-Loss variant to compare: `preferred`, else the G-Loss method with the widest coverage,
    then the best mean validation selection metric of its replicate runs (never the test metric)."""
    if preferred:
        if preferred not in set(frame["method"]):
            raise ValueError(f"method {preferred!r} is not in these runs; methods: {sorted(set(frame['method']))}")
        return preferred
    candidates = frame[frame["loss"] == "gloss"]
    if candidates.empty:
        return None
    validation = validation_scores(runs) if runs is not None else candidates.iloc[0:0]
    validation = validation[validation["method"].isin(set(candidates["method"]))]
    coverage = candidates.groupby("method")["block"].nunique()
    val_mean = validation.groupby("method")["value"].mean().reindex(coverage.index)
    summary = pd.DataFrame({"blocks": coverage, "val": val_mean.fillna(-math.inf)})
    return summary.sort_values(["blocks", "val"], ascending=False).index[0]


def chosen_note(target: str, preferred: str | None) -> str:
    return (f"G-Loss variant: {target} (given with --gloss)." if preferred else
            f"G-Loss variant: {target}, chosen among the G-Loss variants by the widest dataset coverage, then the best "
            "mean validation selection metric (val_macro_f1; val_macro_silhouette standalone) of its replicate runs, "
            "never by test; --gloss names another.")


def matched(frame: pd.DataFrame, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of methods a and b on the seeds both have, in seed order."""
    wide = frame[frame["method"].isin([a, b])].pivot_table(index="seed", columns="method", values="value")
    if a not in wide or b not in wide:
        return np.array([]), np.array([])
    wide = wide[[a, b]].dropna().sort_index()
    return wide[a].to_numpy(), wide[b].to_numpy()


def mean_std_n(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of `value` per group, groups in order of appearance."""
    rows = []
    for key, group in frame.groupby(by, sort=False):
        spread = mean_std(group["value"])
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "mean": spread.mean,
                     "std": spread.std, "n": spread.n})
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "n"])


def _n_text(counts) -> str:
    lo, hi = int(min(counts)), int(max(counts))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def not_worse_than_best(part: pd.DataFrame, higher_is_better: bool = True, alpha: float = ALPHA) -> set[str]:
    """The method with the best mean in `part` (method, seed, value) and every method not
    significantly worse than it: paired t-test over matched seeds, Holm across the methods
    compared. A method with fewer than two matched seeds cannot be told apart: it stays in."""
    means = part.groupby("method")["value"].mean().dropna()
    if means.empty:
        return set()
    best = means.idxmax() if higher_is_better else means.idxmin()
    others = [m for m in means.index if m != best]
    ps = []
    for method in others:
        a, b = matched(part, best, method)
        result = paired_test(a, b) if len(a) >= 2 else None
        if result is None:
            ps.append(math.nan)
        elif not np.isfinite(result.p):  # every pair differs by the same amount: a tie only if that is 0
            ps.append(1.0 if result.diff == 0 else 0.0)
        else:
            ps.append(result.p)
    adjusted = holm(ps)
    return {best} | {m for m, p in zip(others, adjusted) if not p < alpha}


def common_datasets(frame: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Within each group of `by`, keep only the datasets every method of the group covers; returns
    the kept rows and one sentence per dataset left out, saying which methods lack it."""
    kept, notes = [], []
    for key, part in frame.groupby(by, sort=False):
        methods = set(part["method"])
        coverage = part.groupby("dataset")["method"].agg(set)
        full = [d for d, have in coverage.items() if have == methods]
        for dataset, have in coverage.items():
            if have != methods:
                label = " / ".join(map(str, key if isinstance(key, tuple) else (key,)))
                notes.append(f"{label}: {dataset} left out: {', '.join(sorted(methods - have))} did not run on it")
        kept.append(part[part["dataset"].isin(full)])
    return (pd.concat(kept, ignore_index=True) if kept else frame.iloc[0:0]), notes


# ---- Table 2 -------------------------------------------------------------------------------------
def table2(runs: Runs, baseline: str | None = "ce", alpha: float = ALPHA, decimals: int = 2) -> Table | None:
    metrics = {"acc": scores(runs, "test_accuracy", "integrated"), "F1": scores(runs, "test_macro_f1", "integrated")}
    if metrics["acc"].empty:
        return None
    datasets = list(dict.fromkeys(metrics["acc"]["dataset"]))
    rows = metrics["acc"][["model", "method"]].drop_duplicates().to_numpy().tolist()
    cells, numbers, marks = [], [], {}
    means = {}
    sig = {}  # (model, method, dataset, short) -> (Holm p, diff) against the baseline
    bold = {}  # (model, dataset, short) -> methods in bold
    use_baseline = baseline if baseline in set(metrics["acc"]["method"]) else None
    for short, frame in metrics.items():
        summary = mean_std_n(frame, ["model", "method", "dataset"])
        for r in summary.itertuples():
            means[(r.model, r.method, r.dataset, short)] = (round(100 * r.mean, decimals), 100 * r.std, r.n)
        for (model, dataset), part in frame.groupby(["model", "dataset"], sort=False):
            bold[(model, dataset, short)] = not_worse_than_best(part, True, alpha)
        if use_baseline:
            for (model, method), _ in frame.groupby(["model", "method"]):
                if method == use_baseline:
                    continue
                tests = []
                for dataset in datasets:
                    part = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
                    a, b = matched(part, method, use_baseline)
                    tests.append(paired_test(a, b) if len(a) >= 2 else None)
                adjusted = holm([t.p if t is not None else math.nan for t in tests])
                for dataset, test, p in zip(datasets, tests, adjusted):
                    sig[(model, method, dataset, short)] = (p, test.diff if test is not None else math.nan)
    for model, method in rows:
        row = {"Model": model, "Loss": method}
        counts = []
        for dataset in datasets:
            for short in ("acc", "F1"):
                mean, std, n = means.get((model, method, dataset, short), (math.nan, math.nan, 0))
                p, diff = sig.get((model, method, dataset, short), (None, math.nan))
                arrow = ("↑" if diff > 0 else "↓") if p is not None and p < alpha else ""
                row[f"{dataset} {short}"] = (pm(mean, std, decimals) + arrow) if n else "–"
                numbers.append({"model": model, "method": method, "dataset": dataset, "metric": short,
                                "mean": mean, "std": round(std, decimals) if n > 1 else math.nan, "n": n,
                                "p_holm_vs_baseline": p, "direction_vs_baseline": arrow or None,
                                "bold": method in bold.get((model, dataset, short), set())})
                if n:
                    counts.append(n)
        row["n"] = _n_text(counts) if counts else "0"
        cells.append(row)
    frame = pd.DataFrame(cells)
    for i, (model, method) in enumerate(rows):
        for dataset in datasets:
            for short in ("acc", "F1"):
                if method in bold.get((model, dataset, short), set()):
                    marks[(i, f"{dataset} {short}")] = "best"
    common, left_out = common_datasets(metrics["acc"], ["model"])
    acc_means = common.groupby(["model", "dataset", "method"])["value"].mean()
    ranks = {}
    for model in frame["Model"].unique():
        if model in acc_means.index.get_level_values("model"):
            per_dataset = acc_means.loc[model].unstack("method")
            ranks.update({(model, m): v for m, v in per_dataset.rank(axis=1, ascending=False).mean().items()})
    frame["avg rank (acc)"] = [fmt(ranks.get((m, l), math.nan), 2) for m, l in zip(frame["Model"], frame["Loss"])]
    notes = ["Test accuracy and macro-F1 (%), mean ± std (ddof=1) over n seeds of each cell's best configuration.",
             f"Bold: the best mean and every method not significantly worse than it within its model (paired t-test "
             f"over matched seeds, Holm across the methods compared, α={alpha}); a method with < 2 matched seeds "
             "cannot be told apart and stays bold.",
             "avg rank: mean over the datasets every method of the model covers of its accuracy rank (1 = best)."]
    notes += [f"avg rank: {note}" for note in left_out]
    if use_baseline:
        notes.append(f"↑ / ↓: significantly better / worse than {use_baseline} (paired t-test over matched seeds, "
                     f"Holm across datasets, α={alpha}).")
    return Table("table2", "Table 2: integrated protocol, test accuracy / macro-F1", frame,
                 pd.DataFrame(numbers), marks, notes)


# ---- Table 3 -------------------------------------------------------------------------------------
TABLE3 = [  # column, metric, scale, decimals, higher is better, mean ± std?
    ("Accuracy (%)", "test_accuracy", 100, 2, True, True),
    ("Macro-F1 (%)", "test_macro_f1", 100, 2, True, True),
    ("Silhouette", "test_macro_silhouette", 1, 4, True, True),
    ("Total time (s)", "total_time_s", 1, 2, False, False),
    ("Time/epoch (s)", "time_per_epoch_s", 1, 2, False, False),
    ("Epochs", "best_epoch", 1, 1, False, False),
]


def table3(runs: Runs) -> Table | None:
    frames = {metric: scores(runs, metric, "standalone") for _, metric, *_ in TABLE3}
    base = frames["test_accuracy"]
    if base.empty:
        return None
    order = base[["block", "method"]].drop_duplicates().to_numpy().tolist()
    cells, numbers, means = [], [], {}
    for column, metric, scale, decimals, _, spread in TABLE3:
        for r in mean_std_n(frames[metric], ["block", "method"]).itertuples():
            means[(r.block, r.method, column)] = (round(scale * r.mean, decimals), scale * r.std, r.n)
    for block, method in order:
        row, record = {"Dataset": block, "Loss": method}, {"dataset": block, "method": method}
        for column, metric, scale, decimals, _, spread in TABLE3:
            mean, std, n = means.get((block, method, column), (math.nan, math.nan, 0))
            row[column] = (pm(mean, std, decimals) if spread else fmt(mean, decimals)) if n else "–"
            record[metric + "_mean"] = mean
            if spread:
                record[metric + "_std"] = round(std, decimals) if n > 1 else math.nan
        record["n"] = means.get((block, method, "Accuracy (%)"), (0, 0, 0))[2]
        row["n"] = str(record["n"])
        cells.append(row)
        numbers.append(record)
    frame, marks = pd.DataFrame(cells), {}
    for column, metric, scale, decimals, higher, spread in TABLE3:
        if metric in ("total_time_s", "time_per_epoch_s"):
            continue  # wall-clock seconds depend on the machine's load: shown, never ranked here
        for block, part in frames[metric].groupby("block", sort=False):
            if spread:
                chosen = not_worse_than_best(part, higher)
            else:
                block_means = part.groupby("method")["value"].mean()
                chosen = {block_means.idxmax() if higher else block_means.idxmin()} if len(block_means) > 1 else set()
            for i, (b, method) in enumerate(order):
                if b == block and method in chosen:
                    marks[(i, column)] = "best"
    notes = ["Standalone protocol: each loss alone, then a linear probe on frozen embeddings. Mean ± std (ddof=1) "
             "over n seeds; times and epochs are means. Epochs: the early-stopping epoch (best validation "
             "silhouette).",
             f"Bold: the best mean and every method not significantly worse than it per dataset (paired t-test over "
             f"matched seeds, Holm, α={ALPHA}); Epochs: the fewest. Times are wall-clock seconds and depend on what "
             "else ran on the machine: they are not ranked."]
    return Table("table3", "Table 3: standalone protocol", frame, pd.DataFrame(numbers), marks, notes)


CONDITIONS = ("tags.node", "tags.concurrency")  # recorded with each trial run by the sweep's logger


def same_conditions(frame: pd.DataFrame, a: str, b: str) -> bool:
    """Every run of methods a and b ran on one node with one constant number of trials beside it."""
    part = frame[frame["method"].isin([a, b])]
    if part.empty or part[list(CONDITIONS)].isna().any().any():
        return False
    return len(part[list(CONDITIONS)].drop_duplicates()) == 1 and "-" not in str(part["tags.concurrency"].iloc[0])


def table4(runs: Runs, gloss: str | None = None, competitor: str | None = None) -> Table | None:
    protocol = "standalone" if not scores(runs, "test_accuracy", "standalone").empty else "integrated"
    acc = scores(runs, "test_accuracy", protocol)
    sil = scores(runs, "test_macro_silhouette", protocol)
    best_epoch = scores(runs, "best_epoch", protocol)
    epoch = scores(runs, "time_per_epoch_s", protocol, extra=CONDITIONS)
    target = gloss_method(acc, gloss, runs)
    if target is None or acc["method"].nunique() < 2:
        return None
    cells, numbers = [], []
    for block in acc["block"].unique():
        part = acc[acc["block"] == block]
        others = part[(part["method"] != target) & (part["loss"] != "gloss")].groupby("method")["value"].mean()
        if others.empty or target not in set(part["method"]):
            continue
        rival = competitor if competitor in others.index else others.idxmax()

        def mean(frame, method):
            values = frame[(frame["block"] == block) & (frame["method"] == method)]["value"]
            return float(values.mean()) if len(values) else math.nan

        s_g, s_c, t_g, t_c = mean(sil, target), mean(sil, rival), mean(epoch, target), mean(epoch, rival)
        s_g, s_c, t_g, t_c = round(s_g, 4), round(s_c, 4), round(t_g, 2), round(t_c, 2)
        e_g, e_c = round(mean(best_epoch, target), 1), round(mean(best_epoch, rival), 1)
        d_sil = round(100 * (s_g - s_c) / abs(s_c), 1) if s_c else math.nan
        comparable = same_conditions(epoch[epoch["block"] == block], target, rival)
        faster = round(100 * (t_c - t_g) / t_c, 1) if t_c and comparable else math.nan
        cells.append({"Dataset": block, "Competitor": rival, f"Silhouette {target}": fmt(s_g, 4),
                      "Silhouette competitor": fmt(s_c, 4), "Δ silhouette (%)": f"{d_sil:+.1f}" if d_sil == d_sil else "–",
                      f"Epoch of best {target}": fmt(e_g, 1), "Epoch of best competitor": fmt(e_c, 1),
                      f"Time/epoch {target} (s)": fmt(t_g, 2), "Time/epoch competitor (s)": fmt(t_c, 2),
                      "faster (%)": f"{faster:+.1f}" if faster == faster else "– (conditions differ)"})
        numbers.append({"dataset": block, "gloss": target, "competitor": rival, "silhouette_gloss": s_g,
                        "silhouette_competitor": s_c, "silhouette_diff_pct": d_sil, "best_epoch_gloss": e_g,
                        "best_epoch_competitor": e_c, "time_per_epoch_gloss_s": t_g,
                        "time_per_epoch_competitor_s": t_c, "same_conditions": comparable, "faster_pct": faster})
    if not cells:
        return None
    notes = [f"{protocol} protocol. Competitor: {'the given method' if competitor else 'the non-G-Loss method with the best mean test accuracy on that dataset'}. "
             "Δ silhouette = (G − C)/|C|, from the means shown. Epoch of best: the early-stopping epoch, mean over seeds "
             "(what load on the machine cannot change).",
             "faster = (C − G)/C of the mean seconds per epoch, given only when every run of both methods ran on one "
             "node with one constant number of concurrent trials (recorded with each run); otherwise the seconds are "
             "shown without a verdict: they measure the machine's load as much as the loss.",
             chosen_note(target, gloss)]
    return Table("table4", f"Table 4: {target} against its closest non-G-Loss competitor", pd.DataFrame(cells),
                 pd.DataFrame(numbers), {}, notes)


# ---- Table 5 -------------------------------------------------------------------------------------
def published_table5() -> pd.DataFrame:
    with resources.files("analysis").joinpath("data/paper_table5.csv").open(encoding="utf-8") as f:
        return pd.read_csv(f, comment="#")


def table5(runs: Runs, gloss: str | None = None, decimals: int = 2) -> Table | None:
    published = published_table5()
    datasets = [c for c in published.columns if c not in ("model", "source")]
    acc = scores(runs, "test_accuracy")
    rows = [{"Model": r["model"], **{d: fmt(r[d], decimals) for d in datasets}, "Source": r["source"]}
            for _, r in published.iterrows()]
    numbers = [{"model": r["model"], "source": r["source"], **{f"{d}_mean": r[d] for d in datasets}}
               for _, r in published.iterrows()]
    notes = ["Published rows: accuracy (%) as printed in the paper's Table 5 (analysis/data/paper_table5.csv cites "
             "each source). Ours: test accuracy (%), mean ± std over n seeds."]
    target = gloss_method(acc, gloss, runs) if not acc.empty else None
    if target is None:
        return None
    ours = acc[acc["method"] == target].assign(paper=lambda f: f["dataset"].str.lower().map(PAPER_DATASETS))
    unmatched = sorted(set(ours.loc[ours["paper"].isna(), "dataset"]))
    several = ours["protocol"].nunique() > 1
    for (protocol, model), part in ours[ours["paper"].notna()].groupby(["protocol", "model"], sort=False):
        summary = mean_std_n(part, ["paper"]).set_index("paper")
        label = f"{target} + {model}" + (f", {protocol}" if several else "")
        row, record = {"Model": f"{label} (ours)"}, {"model": label, "source": "this run"}
        for d in datasets:
            if d in summary.index:
                s = summary.loc[d]
                row[d] = pm(round(100 * s["mean"], decimals), 100 * s["std"], decimals) + f" (n={int(s['n'])})"
                record[f"{d}_mean"], record[f"{d}_std"] = round(100 * s["mean"], decimals), round(100 * s["std"], decimals)
            else:
                row[d] = "–"
        row["Source"] = "this run"
        rows.append(row)
        numbers.append(record)
    if unmatched:
        notes.append(f"datasets not in the published table, left out: {unmatched}")
    notes.append(chosen_note(target, gloss))
    return Table("table5", "Table 5: ours beside published accuracy (%)", pd.DataFrame(rows),
                 pd.DataFrame(numbers), {}, notes)


# ---- Table 9 -------------------------------------------------------------------------------------
def table9(runs: Runs, metric: str = "test_accuracy", gloss: str | None = None, alpha: float = ALPHA) -> Table | None:
    frame = scores(runs, metric)
    target = gloss_method(frame, gloss, runs)
    if target is None:
        return None
    cells, numbers = [], []
    for rival in [m for m in dict.fromkeys(frame["method"]) if m != target]:
        results = []
        for block in frame["block"].unique():
            a, b = matched(frame[frame["block"] == block], target, rival)
            if len(a):
                results.append((block, paired_test(a, b, alpha)))
        adjusted = holm([r.p for _, r in results])
        adjusted_wilcoxon = holm([r.wilcoxon_p if r.wilcoxon_p is not None else math.nan for _, r in results])
        for (block, r), p_holm, w_holm in zip(results, adjusted, adjusted_wilcoxon):
            verdict = ("better" if r.diff > 0 else "worse") if p_holm < alpha else "n.s."
            numbers.append({"dataset": block, "gloss": target, "baseline": rival, "n": r.n,
                            "mean_gloss": round(100 * r.mean_a, 2), "mean_baseline": round(100 * r.mean_b, 2),
                            "diff": round(100 * r.diff, 2), "ci_low": round(100 * r.ci_low, 2),
                            "ci_high": round(100 * r.ci_high, 2), "t": round(r.t, 3), "p": r.p, "p_holm": p_holm,
                            "d_z": round(r.dz, 2), "p_better": round(r.p_better, 2), "wilcoxon_p": r.wilcoxon_p,
                            "wilcoxon_p_holm": w_holm if r.wilcoxon_p is not None else None,
                            "stars": stars(p_holm), "verdict": verdict, "note": r.note})
            cells.append({"Dataset": block, "Comparison": f"{target} vs {rival}", "n": str(r.n),
                          target: fmt(100 * r.mean_a, 2), "baseline": fmt(100 * r.mean_b, 2),
                          "Δ": f"{100 * r.diff:+.2f}", "95% CI": f"[{fmt(100 * r.ci_low, 2)}, {fmt(100 * r.ci_high, 2)}]",
                          "t": fmt(r.t, 2), "p": p_text(r.p), "p (Holm)": p_text(p_holm) + stars(p_holm), "verdict": verdict,
                          "d_z": fmt(r.dz, 2), "P(G>B)": fmt(r.p_better, 2),
                          "Wilcoxon p (Holm)": p_text(w_holm) if r.wilcoxon_p is not None else "n<6"})
    if not cells:
        return None
    notes = [f"{metric} (%), paired over matched seeds. Δ and its 95% t-interval: {target} minus the baseline. "
             "Holm correction across datasets, per comparison. " + STAR_LEGEND + ".",
             "d_z: mean difference / sd of differences. P(G>B): share of seeds where G-Loss wins (ties half).",
             "verdict: better / worse when the Holm-adjusted t-test p < α, by the sign of Δ; n.s. otherwise.",
             "Wilcoxon signed-rank, Holm-adjusted like t's, only for n ≥ 6: below that its smallest two-sided p is ≥ 0.0625.",
             chosen_note(target, gloss)]
    return Table("table9", f"Table 9: {target} against each baseline, paired t-tests", pd.DataFrame(cells),
                 pd.DataFrame(numbers), {}, notes)


def p_text(p) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


# ---- across datasets -----------------------------------------------------------------------------
def rank_groups(runs: Runs, metric: str = "test_accuracy") -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """Per (protocol, model): datasets x methods of the mean over seeds (Demsar's unit), on the
    datasets every method of the group covers; and a sentence for each dataset left out."""
    frame, notes = common_datasets(scores(runs, metric), ["protocol", "model"])
    out = []
    for (protocol, model), part in frame.groupby(["protocol", "model"], sort=False):
        wide = part.groupby(["dataset", "method"])["value"].mean().unstack("method")
        if wide.shape[1] >= 2 and len(wide):
            out.append((f"{protocol} / {model}", wide))
    return out, notes


def ranks_table(runs: Runs, metric: str = "test_accuracy", alpha: float = ALPHA) -> tuple[Table | None, dict]:
    cells, numbers, tests = [], [], {}
    groups, left_out = rank_groups(runs, metric)
    for label, wide in groups:
        result = friedman_nemenyi(wide, True, alpha)
        tests[label] = result
        for method, rank in result.ranks.items():
            cells.append({"Group": label, "Method": method, "avg rank": fmt(rank, 2), "N datasets": str(result.n_blocks),
                          "Friedman p": p_text(result.friedman_p), f"CD (α={alpha})": fmt(result.cd, 2)})
            numbers.append({"group": label, "method": method, "avg_rank": round(rank, 2), "n_datasets": result.n_blocks,
                            "friedman_chi2": result.friedman_chi2, "friedman_p": result.friedman_p,
                            "iman_davenport_p": result.iman_davenport_p, "cd": round(result.cd, 2)})
    if not cells:
        return None, tests
    notes = [f"{metric}: per-dataset means over seeds ranked within each dataset (1 = best), Friedman's test, "
             "Nemenyi's critical difference (two methods differ when their average ranks differ by more than CD). "
             "Only datasets that every method of the group covers are ranked."]
    notes += left_out
    for label, result in tests.items():
        notes += [f"{label}: {note}" for note in result.notes]
    return Table("ranks", "Average ranks across datasets (Friedman + Nemenyi)", pd.DataFrame(cells),
                 pd.DataFrame(numbers), {}, notes), tests


def aggregate_table(runs: Runs, metric: str = "test_accuracy", reps: int = 10000) -> Table | None:
    frame, left_out = common_datasets(scores(runs, metric), ["protocol", "model"])
    cells, numbers = [], []
    few = False
    for (protocol, model, method), part in frame.groupby(["protocol", "model", "method"], sort=False):
        per_dataset = {d: g["value"].to_numpy() for d, g in part.groupby("dataset")}
        point, low, high = stratified_bootstrap_ci(per_dataset, reps=reps)
        fewest = min(len(v) for v in per_dataset.values())
        if fewest < MIN_BOOTSTRAP_SEEDS:
            low = high = math.nan
            few = True
        n = _n_text([len(v) for v in per_dataset.values()])
        cells.append({"Protocol / model": f"{protocol} / {model}", "Method": method, "datasets": str(len(per_dataset)),
                      "seeds": n, "mean (%)": fmt(100 * point, 2),
                      "95% bootstrap CI": f"[{fmt(100 * low, 2)}, {fmt(100 * high, 2)}]" if low == low else "–"})
        numbers.append({"group": f"{protocol} / {model}", "method": method, "datasets": len(per_dataset),
                        "mean": round(100 * point, 2), "ci_low": round(100 * low, 2) if low == low else math.nan,
                        "ci_high": round(100 * high, 2) if high == high else math.nan})
    if not cells:
        return None
    notes = [f"{metric}: mean over the datasets every method of the group covers of the per-dataset mean over seeds; "
             f"percentile bootstrap CI with seeds resampled within each dataset ({reps} resamples, seed 0). With 5-10 "
             "seeds a percentile bootstrap is still too narrow: read it as a bootstrap CI (n = seeds), not as a guarantee."]
    if few:
        notes.append(f"–: fewer than {MIN_BOOTSTRAP_SEEDS} seeds on some dataset; a percentile bootstrap of so few "
                     "values only restates them, so no interval is given.")
    notes += left_out
    return Table("aggregate", "Mean over datasets with bootstrap CIs", pd.DataFrame(cells), pd.DataFrame(numbers),
                 {}, notes)


def convergence_table(history: pd.DataFrame, metric: str = "val_macro_f1", fraction: float = 0.95) -> Table | None:
    """`history`: per-epoch rows (block, method, run_id, seed, epoch, value) of one metric."""
    if history.empty:
        return None
    reached = []
    for (block, method, run_id), part in history.groupby(["block", "method", "run_id"], sort=False):
        part = part.sort_values("epoch")
        best = part["value"].max()
        first = part.loc[part["value"] >= fraction * best, "epoch"].min()
        reached.append({"block": block, "method": method, "epochs": float(first), "best_epoch":
                        float(part.loc[part["value"].idxmax(), "epoch"])})
    frame = pd.DataFrame(reached)
    cells, numbers = [], []
    for (block, method), part in frame.groupby(["block", "method"], sort=False):
        n = len(part)
        std = part["epochs"].std(ddof=1) if n > 1 else math.nan
        cells.append({"Dataset": block, "Loss": method, f"epochs to {fraction:.0%} of best": pm(part["epochs"].mean(), std, 1),
                      "epoch of best": fmt(part["best_epoch"].mean(), 1), "n": str(n)})
        numbers.append({"dataset": block, "method": method, "epochs_mean": round(part["epochs"].mean(), 1),
                        "epochs_std": round(std, 1) if n > 1 else math.nan,
                        "best_epoch_mean": round(part["best_epoch"].mean(), 1), "n": n})
    notes = [f"{metric} per epoch of the replicate runs: the first epoch at which it reaches {fraction:.0%} of the "
             "run's best value, and the epoch of the best; mean ± std over seeds."]
    return Table("convergence", "Convergence speed", pd.DataFrame(cells), pd.DataFrame(numbers), {}, notes)
