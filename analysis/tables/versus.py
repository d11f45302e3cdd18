"""The chosen G-Loss variant against the other methods (chosen on validation, never on test,
unless `gloss` names it).

- table4: against its closest non-G-Loss competitor: silhouette, epoch of the best, time per epoch
  (a "faster" verdict only between runs under the same conditions).
- table5: ours beside the published numbers (analysis/data/paper_table5.csv).
- table9: against every other method: paired t-tests with stars, per dataset.
"""

from __future__ import annotations

import math
from importlib import resources

import pandas as pd

from analysis.load import Runs
from analysis.stats import ALPHA, STAR_LEGEND, holm, paired_test, stars
from analysis.table import Table, fmt, pm
from analysis.tables.compare import matched, mean_std_n, p_text
from analysis.tables.frames import PAPER_DATASETS, chosen_note, gloss_method, scores


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
