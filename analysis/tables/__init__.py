"""The paper's tables from replicate runs (test metrics over seeds, from the best config per cell),
one module per job:

- `frames`: the final metric of each replicate run, grouped by sweep and protocol, in the paper's
  order; the G-Loss variant the comparisons take, chosen on validation, never on test.
- `compare`: matched seeds, mean ± std per group, the methods not significantly worse than the
  best, the datasets every method covers.
- `protocols`: table2 (integrated protocol) and table3 (standalone protocol).
- `versus`: the G-Loss variant against the others: table4 (its closest non-G-Loss competitor),
  table5 (beside the published numbers), table9 (paired t-tests against every other method).
- `across`: ranks (Friedman + Nemenyi) and aggregate (mean over datasets with bootstrap CIs),
  on the datasets every compared method covers.
- `convergence`: epochs until the validation metric first reaches 95% of the run's best.

Std is the sample std (ddof = 1); n is the number of seeds. Every name is importable from
`analysis.tables`.
"""

from analysis.tables.frames import (KEYS, LOSS_ORDER, PAPER_DATASETS, block_labels, chosen_note, gloss_method,
                                    in_paper_order, scores, validation_scores)
from analysis.tables.compare import common_datasets, matched, mean_std_n, n_text, not_worse_than_best, p_text
from analysis.tables.protocols import TABLE3, table2, table3
from analysis.tables.versus import CONDITIONS, published_table5, same_conditions, table4, table5, table9
from analysis.tables.across import MIN_BOOTSTRAP_SEEDS, aggregate_table, rank_groups, ranks_table
from analysis.tables.convergence import convergence_table

__all__ = ["CONDITIONS", "KEYS", "LOSS_ORDER", "MIN_BOOTSTRAP_SEEDS", "PAPER_DATASETS", "TABLE3", "aggregate_table",
           "block_labels", "chosen_note", "common_datasets", "convergence_table", "gloss_method", "in_paper_order",
           "matched", "mean_std_n", "n_text", "not_worse_than_best", "p_text", "published_table5", "rank_groups",
           "ranks_table", "same_conditions", "scores", "table2", "table3", "table4", "table5", "table9",
           "validation_scores"]
