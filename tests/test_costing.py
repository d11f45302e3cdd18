"""`gloss sweep plan`: the trials, epochs and GPU time of the shipped specs, counted by hand here
from what each spec says (no Ray starts)."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss_cli import app
from sweeps.costing import CostingError, estimate, parse_epoch_seconds, plan_sweep
from sweeps.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SECONDS = {"bert-base": 60.0, "roberta-large": 180.0, "distilbert-base": 30.0}


def test_demo_counts():
    plan = plan_sweep(load_spec(REPO / "sweeps/specs/demo.yaml"))
    # 2 cells, lr loguniform in both spaces: num_samples 4 each; 2 replicate seeds; 3 epochs (asha.max_t)
    assert (plan.trials("search"), plan.trials("replicate")) == (8, 4)
    assert plan.max_epochs("search") == plan.max_epochs("replicate") == 3
    # gloss_o only: sigma_scale x0.5, x2 (a constant: both exact) and lam, gamma +-0.1 (searched: at most
    # 2 each, as the best config decides), on the 2 replicate seeds
    assert plan.trials("sensitivity") == (2 + 2 + 2) * 2 and not plan.exact("sensitivity")
    assert plan.exact("search") and plan.exact("replicate")


def test_table2_counts_and_estimate():
    spec = load_spec(REPO / "sweeps/specs/table2.yaml")
    plan = plan_sweep(spec)
    # per (dataset, model): ce has 5 learning rates (5 < 20: enumerated), scl_ce 5 x 4 = 20 points,
    # gloss_o_ce a loguniform sigma (20), gloss_sqrt_ce 125 points (20): 65; x 5 datasets x 3 models
    assert plan.trials("search") == 65 * 15 == 975
    assert plan.trials("replicate") == 5 * 3 * 4 * 5 == 300
    assert plan.trials("sensitivity") == 5 * 3 * 6 * 5 == 450  # gloss_o_ce: 3 params x 2 steps x 5 seeds
    assert plan.max_epochs("search") == 200 and plan.trial_epochs("replicate") == 300 * 200

    costs = {c.phase: c for c in estimate(plan, SECONDS, gpus=8)}
    share_seconds = 0.5 * 60 + 1 * 180 + 0.5 * 30  # one epoch of each model, times its GPU share
    assert costs["search"].gpu_hours == pytest.approx(5 * 65 * 200 * share_seconds / 3600)  # 4062.5
    assert costs["search"].wall_hours == pytest.approx(5 * 65 * 200 * share_seconds / 8 / 3600)
    assert costs["replicate"].gpu_hours == pytest.approx(5 * 4 * 5 * 200 * share_seconds / 3600)  # 1250
    assert costs["sensitivity"].gpu_hours == pytest.approx(5 * 6 * 5 * 200 * share_seconds / 3600)
    # on many GPUs the longest cell is the bound: roberta-large's 20 trials, 4 at a time, 200 epochs each
    wide = {c.phase: c for c in estimate(plan, SECONDS, gpus=10_000)}
    assert wide["search"].wall_hours == pytest.approx(5 * 200 * 180 / 3600)


def test_a_cell_pattern_counts_only_its_cells():
    spec = load_spec(REPO / "sweeps/specs/table2.yaml")
    plan = plan_sweep(spec, "R8__bert-base__*")  # what `gloss sweep run --cells` would run
    assert [row.cell.name for row in plan.phases["search"]] == [
        f"R8__bert-base__{loss}__s0" for loss in ("ce", "scl_ce", "gloss_o_ce", "gloss_sqrt_ce")]
    assert plan.trials("search") == 65 and plan.trials("replicate") == 4 * 5 and plan.trials("sensitivity") == 6 * 5


def test_epoch_seconds_are_checked():
    spec = load_spec(REPO / "sweeps/specs/table2.yaml")
    with pytest.raises(CostingError, match=r"'gpt2' is not a model of this spec"):
        parse_epoch_seconds(["gpt2=10"], spec)
    with pytest.raises(CostingError, match=r"--epoch-seconds 'bert-base=fast': give MODEL=SECONDS"):
        parse_epoch_seconds(["bert-base=fast"], spec)
    with pytest.raises(CostingError, match=r"no value for model\(s\) \['roberta-large', 'distilbert-base'\]"):
        parse_epoch_seconds(["bert-base=60"], spec)


def test_plan_command_prints_the_counts_and_the_estimate():
    args = ["sweep", "plan", str(REPO / "sweeps/specs/table2.yaml"), "--gpus", "8",
            *(a for model, s in SECONDS.items() for a in ("--epoch-seconds", f"{model}={s:g}"))]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\s+", " ", result.output)
    assert "sweep table2: 60 cells" in text
    assert re.search(r"search │ 975 │ 200 │ 195000 │ at most 4062\.5 │ at most 507\.8", text), text
    assert re.search(r"sensitivity │ at most 450 │ 200 │", text)
    assert "MR__roberta-large__gloss_o_ce__s0 │ 4 │ 1 │ 20 │ 5 │ <= 30" in text
    bad = CliRunner().invoke(app, ["sweep", "plan", str(REPO / "sweeps/specs/demo.yaml"), "--epoch-seconds", "x=1"])
    assert bad.exit_code == 2 and "'x' is not a model of this spec" in bad.output
