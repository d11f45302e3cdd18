"""Figures, each written as PNG and PDF; the caption and the provenance travel in each file's
metadata (PNG text chunks Title / Description, PDF Title / Subject), not drawn in the image.

- learning_curves: validation metric per epoch, mean and (n >= 3 seeds) 95% t-band (paper's curves).
- cd_diagram: average ranks with Nemenyi's critical difference and cliques (Demsar 2006).
- timing_breakdown: mean seconds per epoch in each training phase (paper Fig. 6).
- ablation: metric against one G-Loss hyperparameter, one line per dataset (paper Figs. 2-3).
- tornado: one-at-a-time swings of each parameter around the centre config, seed whiskers (Fig. 7).
- tsne: test embeddings per method (Fig. 5); adjacency: one batch's affinity over epochs (Fig. 4).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.stats import RankTest  # noqa: E402


def save(fig, folder: Path, name: str, meta: dict[str, str] | None = None) -> list[Path]:
    """PNG and PDF; `meta` {"title", "provenance"} goes into each file's metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = meta or {}
    title, provenance = meta.get("title", name), meta.get("provenance", "")
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    # the tight crop is measured once, for both files: `bbox_inches="tight"` lays the figure out
    # once more per file just to measure it (issue 20: the report of a paper-scale grid draws 20
    # figures, many of 15 panels); the PDF's crop then follows the PNG's text metrics (< 1 pt apart)
    fig.draw_without_rendering()
    crop = fig.get_tightbbox().padded(matplotlib.rcParams["savefig.pad_inches"])
    fig.savefig(paths[0], dpi=130, bbox_inches=crop,
                metadata={"Title": title, "Description": provenance, "Software": "gloss analyze"})
    fig.savefig(paths[1], bbox_inches=crop, metadata={"Title": title, "Subject": provenance, "Creator": "gloss analyze"})
    plt.close(fig)
    return paths


def _grid(count: int, width: float = 4.2, height: float = 3.2):
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


MIN_BAND_SEEDS = 3  # a t-band of two seeds is +-12.7 standard errors: noise, not information


def _t_band(values: np.ndarray) -> float:
    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)) if n >= MIN_BAND_SEEDS else math.nan


def learning_curves(history: pd.DataFrame, metric: str, folder: Path, meta: dict | None = None) -> list[Path]:
    """`history`: rows with block, method, seed, epoch, value (one metric)."""
    if history.empty:
        return []
    blocks = list(dict.fromkeys(history["block"]))
    fig, axes = _grid(len(blocks))
    for ax, block in zip(axes, blocks):
        for method, part in history[history["block"] == block].groupby("method", sort=False):
            curve = part.groupby("epoch")["value"].agg(list)
            epochs = curve.index.to_numpy(dtype=float)
            mean = np.array([np.mean(v) for v in curve])
            band = np.array([_t_band(np.asarray(v)) for v in curve])
            ax.plot(epochs, mean, marker="o", ms=3, label=f"{method} (n={part['seed'].nunique()})")
            if np.isfinite(band).any():
                ax.fill_between(epochs, mean - band, mean + band, alpha=0.2)
        ax.set_title(block, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"Validation learning curves ({metric}): mean over seeds, 95% t-band where n ≥ {MIN_BAND_SEEDS}",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, folder, f"learning_curves_{metric}", meta)


def cliques(test: RankTest) -> list[list[str]]:
    """Maximal groups of methods (in rank order) that Nemenyi's test cannot tell apart."""
    names = list(test.ranks.sort_values().index)
    groups = []
    for i in range(len(names)):
        j = max(k for k in range(len(names)) if not test.differs(names[i], names[k]) or k <= i)
        if j > i and not any(a <= i and j <= b for a, b in groups):
            groups.append((i, j))
    return [names[a:b + 1] for a, b in groups]


def cd_diagram(test: RankTest, title: str, folder: Path, name: str, meta: dict | None = None) -> list[Path]:
    ranks = test.ranks.sort_values()
    k = len(ranks)
    groups = cliques(test)
    drop = 0.35 + 0.25 * len(groups)  # the clique bars sit between the axis and the labels
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.3 * k + 0.2 * len(groups)))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(k // 2 + 1.5 + drop), 2.2)
    ax.axis("off")
    ax.hlines(0, 1, k, color="k")
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.15, color="k")
        ax.text(r, 0.3, str(r), ha="center", fontsize=8)
    if np.isfinite(test.cd):
        ax.hlines(1.3, 1, 1 + test.cd, color="tab:red", lw=2)
        ax.text(1 + test.cd / 2, 1.5, f"CD = {test.cd:.2f}", ha="center", fontsize=8, color="tab:red")
    half = math.ceil(k / 2)
    for i, (method, rank) in enumerate(ranks.items()):
        left = i < half
        y = -(i + 1 if left else k - i) - drop
        x_text = 0.8 if left else k + 0.2  # labels outside the axis, the lines running to them
        ax.plot([rank, rank, x_text], [0, y, y], color="0.2", lw=0.8)
        ax.text(x_text - 0.05 if left else x_text + 0.05, y, f"{method} ({rank:.2f})", ha="right" if left else "left",
                va="center", fontsize=8)
    for depth, group in enumerate(groups):
        lo, hi = ranks[group[0]], ranks[group[-1]]
        ax.hlines(-0.3 - 0.25 * depth, lo - 0.05, hi + 0.05, color="tab:blue", lw=3)
    p = "n/a" if test.friedman_p is None else f"{test.friedman_p:.3g}"
    ax.set_title(f"{title}: average ranks (1 = best), N={test.n_blocks} datasets, Friedman p={p}", fontsize=9)
    return save(fig, folder, name, meta)


def timing_breakdown(timing: pd.DataFrame, folder: Path, meta: dict | None = None) -> list[Path]:
    """`timing`: rows with block, method, phase, seconds (mean per epoch)."""
    if timing.empty:
        return []
    blocks = list(dict.fromkeys(timing["block"]))
    phases = list(dict.fromkeys(timing["phase"]))
    fig, axes = _grid(len(blocks), 5.0, 0.6 + 0.45 * timing["method"].nunique())
    colors = plt.get_cmap("tab10")
    for ax, block in zip(axes, blocks):
        wide = timing[timing["block"] == block].pivot_table(index="method", columns="phase", values="seconds",
                                                            sort=False).reindex(columns=phases).fillna(0.0)
        left = np.zeros(len(wide))
        for i, phase in enumerate(phases):
            ax.barh(wide.index, wide[phase], left=left, color=colors(i % 10), label=phase)
            left += wide[phase].to_numpy()
        for y, total in enumerate(left):
            ax.text(total, y, f" {total:.2f}s", va="center", fontsize=7)
        ax.set_title(block, fontsize=9)
        ax.set_xlabel("seconds per epoch")
    fig.suptitle("Per-epoch timing breakdown (mean over epochs and seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=len(phases), loc="upper right")
    return save(fig, folder, "timing_breakdown", meta)


def ablation(points: pd.DataFrame, param: str, metric: str, folder: Path, meta: dict | None = None) -> list[Path]:
    """`points`: rows with block, x (the parameter's value), mean, std, n."""
    if points.empty:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for block, part in points.groupby("block", sort=False):
        part = part.sort_values("x")
        low, high = int(part["n"].min()), int(part["n"].max())
        ax.errorbar(part["x"], part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3,
                    label=f"{block} (n={low if low == high else f'{low}-{high}'})")
    ax.set_xlabel(param)
    xs = sorted(points["x"].unique())
    if param in ("sigma", "sigma_scale") and xs[0] > 0 and xs[-1] / xs[0] >= 4:
        ax.set_xscale("log")  # multipliers of the kernel width
    if len(xs) <= 8:  # label the values that ran, in plain numbers
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    elif isinstance(ax.xaxis.get_major_formatter(), matplotlib.ticker.ScalarFormatter):
        ax.xaxis.get_major_formatter().set_useOffset(False)
    ax.set_ylabel(metric)
    ax.set_title(f"Ablation of {param}: mean ± std over seeds", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, folder, f"ablation_{param}", meta)


def tornado(bars: pd.DataFrame, centre: float, group: str, metric: str, folder: Path, name: str,
            meta: dict | None = None) -> list[Path]:
    """`bars`: rows with param, centre_x, low_x/low_mean/low_std, high_x/high_mean/high_std, swing
    (largest first; a skipped side is NaN). Bars run from the centre to each side's mean; whiskers
    are the std over seeds."""
    bars = bars.iloc[::-1].reset_index(drop=True)  # barh draws bottom-up: the largest swing on top
    fig, ax = plt.subplots(figsize=(6.4, 1.1 + 0.6 * len(bars)))
    y = np.arange(len(bars))
    for side, offset, color in (("low", -0.18, "tab:blue"), ("high", 0.18, "tab:orange")):
        mean, std = bars[f"{side}_mean"], bars[f"{side}_std"].fillna(0)
        shown = mean.notna().to_numpy()
        ax.barh(y[shown] + offset, (mean - centre)[shown], left=centre, height=0.36, color=color,
                label=f"{side} value")
        ax.errorbar(mean[shown], y[shown] + offset, xerr=std[shown], fmt="none", ecolor="k", capsize=3)
    ax.axvline(centre, color="k", lw=1)

    def label(r) -> str:
        low = "–" if r.low_x != r.low_x else f"{r.low_x:g}"
        high = "–" if r.high_x != r.high_x else f"{r.high_x:g}"
        return f"{r.param}: {low} | {r.centre_x:g} | {high}\n(swing {r.swing:.4f})"

    ax.set_yticks(y, [label(r) for r in bars.itertuples()], fontsize=8)
    ax.set_xlabel(f"{metric} (centre {centre:.4f}: the best config's replicate runs)")
    ax.set_title(f"Sensitivity around the best config, {group}\nmean over seeds, whiskers ± std", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save(fig, folder, name, meta)


def tsne(embeddings: dict[str, tuple[np.ndarray, np.ndarray]], block: str, folder: Path, name: str,
         meta: dict | None = None, max_points: int = 1000, seed: int = 0) -> list[Path]:
    """`embeddings`: method -> (embeddings, labels) of the test set."""
    from sklearn.manifold import TSNE

    fig, axes = _grid(len(embeddings), 3.6, 3.4)
    rng = np.random.default_rng(seed)
    for ax, (method, (emb, labels)) in zip(axes, embeddings.items()):
        keep = rng.permutation(len(emb))[:max_points]
        emb, labels = emb[keep], labels[keep]
        perplexity = max(2.0, min(30.0, (len(emb) - 1) / 3))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb.astype(np.float64))
        classes = np.unique(labels)
        colors = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, k in enumerate(classes):
            ax.scatter(xy[labels == k, 0], xy[labels == k, 1], color=colors(i % colors.N), s=6, label=str(k))
        ax.set_title(f"{method} ({len(emb)} test points)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0].get_legend_handles_labels()
    if len(names) <= 20:
        fig.legend(handles, names, title="class", fontsize=7, loc="center right", markerscale=2)
    fig.suptitle(f"t-SNE of test embeddings, {block}", fontsize=10)
    return save(fig, folder, name, meta)


def adjacency(matrices: dict[int, np.ndarray], labels: np.ndarray, title: str, folder: Path, name: str,
              meta: dict | None = None) -> list[Path]:
    """`matrices`: epoch -> affinity matrix of one fixed batch (rows ordered by label)."""
    fig, axes = _grid(len(matrices), 3.2, 3.0)
    top = max(float(np.max(m)) for m in matrices.values()) or 1.0
    for ax, (epoch, matrix) in zip(axes, sorted(matrices.items())):
        image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=top)
        ax.set_title(f"epoch {epoch}", fontsize=9)
        edges = np.flatnonzero(np.diff(labels)) + 0.5
        for edge in edges:
            ax.axhline(edge, color="w", lw=0.5)
            ax.axvline(edge, color="w", lw=0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="affinity")
    fig.suptitle(title, fontsize=10)
    return save(fig, folder, name, meta)


def importance(scores: pd.DataFrame, folder: Path, meta: dict | None = None) -> list[Path]:
    """`scores`: rows with cell, param, importance, trials (fANOVA, one panel per cell)."""
    if scores.empty:
        return []
    cells = list(dict.fromkeys(scores["cell"]))
    fig, axes = _grid(len(cells), 4.2, 0.8 + 0.45 * scores["param"].nunique())
    for ax, cell in zip(axes, cells):
        part = scores[scores["cell"] == cell].sort_values("importance")
        ax.barh(part["param"], part["importance"], color="tab:purple")
        ax.set_xlim(0, 1)
        ax.set_title(f"{cell} ({int(part['trials'].iloc[0])} full-budget trials)", fontsize=8)
        ax.set_xlabel("fANOVA importance")
    fig.suptitle("Hyperparameter importance in the search phase (fANOVA over full-budget trials)", fontsize=10)
    fig.tight_layout()
    return save(fig, folder, "param_importance", meta)
