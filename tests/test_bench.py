"""Benchmarks that never rot: each `bench/*.py` runs its whole code path with `--smoke` (tiny sizes,
one round, the tiny test encoder; Ray and MLflow as small as they go, SQLite stores in temporary
folders) and must exit 0 and print its table of docs/benchmarks.md, header and rows. The figures mean nothing;
running without `--smoke` regenerates the published ones."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# benchmark -> (table header, row starts that must follow it)
TABLES = {
    "losses.py": [("| loss | n=8, d=16 | n=16, d=16 |",
                   ["| ce |", "| gloss |", "| gloss_batch_sqrt |", "| scl |", "| triplet |", "| cosine |"]),
                  ("| padding | tokens | tiny BERT step (ms) | G-Loss fwd+bwd (ms) | G-Loss / step |",
                   ["| every text to 16 (as asked) | 16 |", "| to the batch's longest (MR texts) |"])],
    "train_throughput.py": [("| loop | samples/s |",
                             ["| `ce`: length-grouped batches", "| `gloss+ce`: the same",
                              "| `gloss+ce, default batching`: class-stratified", "| `reference gloss+ce`: "])],
    "batch_mix.py": [("| dataset | train rows | classes | TV random | TV default (stratified) | TV grouped "
                      "| padded/real random | padded/real default | padded/real grouped | padded/real, all to 128 |",
                      ["| MR | 400 | 2 |"])],
    "sweep_overhead.py": [("| measurement | figure |",
                           ["| 1 short trial (tiny BERT, 1 epoch): plain loop / through the sweep |",
                            "| 2 short trials: plain loop / through the sweep |",
                            "| marginal overhead per trial (slope between 1 and 2) |", "| fixed cost of a sweep "])],
    "driver_overhead.py": [("| store | logger | callback p50 | callback p99 | results/s end to end | metric rows in the store |",
                            ["| SQLite | the sweep's (background writer) |", "| SQLite | Ray's `MLflowLoggerCallback` |"])],
    "scale.py": [("| measurement | figure | target |",
                  ["| cells / trials (search, replicate, sensitivity) | 4 / 16 (8, 4, 4) |", "| search: trials/s (span) |",
                   "| replicate: trials/s (span) |", "| sensitivity: trials/s (span) |",
                   "| whole sweep, driver process start to exit |", "| driver peak RSS |",
                   "| \"operation took\" warnings on the driver's console |",
                   "| driver console lines (piped: one per trial) |", "| MLflow rows: runs / metrics / params / tags |",
                   "| `gloss analyze report` on the sweep |"])],
    "storage.py": [("| measurement | figure | target |",
                    ["| `state.pt` per checkpoint |", "| best-epoch weights file |",
                     "| left under the storage path after the sweep |", "| MLflow store after the sweep ",
                     "| peak under the storage path during the sweep ", "| one checkpoint (write + Tune's copy to storage)",
                     "| checkpoints in the sweep, "])],
    "gpu_check.py": [("| step | status | seconds | result | target |",
                      ["| 1. environment | PASS |", "| 5. two `gpu: 0.5` trials vs one (tiny) | PASS |",
                       "| 2. loss tests on the device | PASS |", "| 3a. bf16 autocast: short training | PASS |",
                       "| 3b. bf16 autocast: loss gradients vs float64 | PASS |",
                       "| 4. sweep with `gpu: 0.5` | PASS |"])],  # the target (5) runs right after 1
}


def markdown_tables(output: str) -> list[list[str]]:
    """Each run of consecutive lines that start with '|'."""
    tables, current = [], []
    for line in output.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    return tables


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


@pytest.mark.parametrize("bench", sorted(TABLES))
def test_benchmark_smoke_run_prints_its_table(bench, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "GLOSS_CACHE": str(tmp_path / "cache"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, f"bench/{bench}", "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"bench/{bench} --smoke failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    tables = {table[0]: table for table in markdown_tables(done.stdout)}
    for header, rows in TABLES[bench]:
        assert header in tables, f"bench/{bench}: no table {header!r}; printed:\n{done.stdout[-3000:]}"
        table = tables[header]
        width = len(cells(header))
        assert re.fullmatch(r"\|( -{3}:? \|)+", table[1]) and len(cells(table[1])) == width, table[1]
        assert all(len(cells(line)) == width for line in table[2:]), "\n".join(table)
        assert len(table) - 2 == len(rows) and all(line.startswith(row) for line, row in zip(table[2:], rows)), (
            "\n".join(table))
    if bench == "driver_overhead.py":  # every metric the sweep's logger was given is in the store
        stored = re.search(r"\| ([\d,]+) of ([\d,]+) \|$", tables[TABLES[bench][0][0]][2])
        assert stored and stored.group(1) == stored.group(2) != "0", tables[TABLES[bench][0][0]][2]
