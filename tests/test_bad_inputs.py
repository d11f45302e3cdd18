"""Every row of docs/bad-inputs.md: the case named there gets an error containing its excerpt."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gloss_core.config import TrainConfig
from gloss_core.data import load_splits
from gloss_core.models import resolve_model_path
from sweeps.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
GLOSS = str(Path(sys.executable).with_name("gloss"))
DOC = REPO / "docs" / "bad-inputs.md"
GOOD = {
    "name": "ok", "datasets": {"x": {"data": "synthetic"}}, "models": {"m": {"model": "minilm"}},
    "losses": {"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-5, 1e-3]}}}},
}


def rows() -> list[tuple[str, str]]:
    out = []
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `([\w-]+)` \|.*\| `(.+)` \|$", line)
        if match:
            out.append((match.group(1), match.group(2)))
    return out


def error_of(call) -> str:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the message is what is checked
        return str(err)
    raise AssertionError("no error raised")


def spec_error(tmp: Path, text: str | None = None, **changes) -> str:
    path = tmp / "spec.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**GOOD, **changes}))
    return error_of(lambda: load_spec(path))


def without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


def csv_folder(tmp: Path, train="text,label\na,x\nb,y\n", val="text,label\na,x\nb,y\n",
               test="text,label\na,x\nb,y\n") -> str:
    folder = tmp / "data"
    folder.mkdir(exist_ok=True)
    for name, content in (("train", train), ("val", val), ("test", test)):
        (folder / f"{name}.csv").write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(folder)


def data_error(tmp: Path, **options) -> str:
    return error_of(lambda: load_splits(TrainConfig(**options)))


def cli(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([GLOSS, *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", done.stdout + done.stderr))


def sweep_exists(tmp: Path) -> str:
    from sweeps.runner import SweepRunner

    spec = load_spec(REPO / "sweeps" / "specs" / "demo.yaml")
    (tmp / "ray_results" / "demo").mkdir(parents=True)
    runner = SweepRunner(spec, f"sqlite:///{tmp / 'mlflow.db'}", str(tmp / "ray_results"))
    return error_of(lambda: runner.run())


CASES = {
    "spec-file-missing": lambda t: error_of(lambda: load_spec(t / "nope.yaml")),
    "spec-not-yaml": lambda t: spec_error(t, "name: [unclosed"),
    "spec-not-mapping": lambda t: spec_error(t, "- a\n- b\n"),
    "spec-no-name": lambda t: spec_error(t, yaml.safe_dump(without("name"))),
    "spec-bad-name": lambda t: spec_error(t, name="my sweep!"),
    "spec-unknown-key": lambda t: spec_error(t, epochz=3),
    "spec-unknown-train-option": lambda t: spec_error(t, train={"lrr": 0.1}),
    "spec-grid-key-in-train": lambda t: spec_error(t, train={"seed": 3}),
    "spec-loss-of-other-protocol": lambda t: spec_error(t, losses={"x": {"loss": "triplet"}}),
    "spec-empty-range": lambda t: spec_error(t, losses={"ce": {"loss": "ce", "space": {"lr": {"loguniform": [1e-3, 1e-5]}}}}),
    "spec-two-distributions": lambda t: spec_error(
        t, losses={"ce": {"loss": "ce", "space": {"lr": {"uniform": [0, 1], "choice": [1]}}}}),
    "spec-zero-cpu": lambda t: spec_error(t, resources={"cpu": 0}),
    "spec-bad-cell-value": lambda t: spec_error(t, datasets={"x": {"data": "synthetic", "batch_size": 0}}),
    "spec-no-seeds": lambda t: spec_error(t, seeds=[]),
    "spec-bad-mode": lambda t: spec_error(t, mode="maximize"),
    "sweep-exists": sweep_exists,
    "data-folder-missing": lambda t: data_error(t, data="/no/such/folder"),
    "data-missing-column": lambda t: data_error(t, data=csv_folder(t, train="text,category\na,x\nb,y\n")),
    "data-empty-text": lambda t: data_error(t, data=csv_folder(t, train="text,label\n,x\nb,y\n"), empty_text="error"),
    "data-not-utf8": lambda t: data_error(t, data=csv_folder(t, val=b"text,label\n\xff,x\nb,y\n")),
    "data-label-absent-from-train": lambda t: data_error(t, data=csv_folder(t, test="text,label\na,x\nb,c\n")),
    "data-single-class": lambda t: data_error(t, data=csv_folder(t, train="text,label\na,x\nb,x\n")),
    "model-folder-missing": lambda t: error_of(lambda: resolve_model_path("./no/such/model")),
    "model-bad-pooling": lambda t: error_of(lambda: TrainConfig(pooling="max")),
    "cli-resume-and-restart": lambda t: cli("sweep", "run", str(REPO / "sweeps/specs/demo.yaml"), "--resume", "--restart",
                                            cwd=t),
    "cli-train-bad-loss": lambda t: cli("train", "--loss", "focal"),
    "cli-status-unknown-sweep": lambda t: cli("sweep", "status", "nope", "--tracking-uri", f"sqlite:///{t / 'm.db'}"),
    "cli-analyze-unknown-experiment": lambda t: cli("analyze", "report", "-e", "nope", "--out", str(t / "r"),
                                                    "--tracking-uri", f"sqlite:///{t / 'm.db'}"),
    "cli-analyze-bad-format": lambda t: cli("analyze", "report", "-e", "x", "--out", str(t / "r"), "--format", "pdf"),
}


def test_the_table_has_at_least_20_cases_and_each_has_a_test():
    documented = [case for case, _ in rows()]
    assert len(documented) >= 20 and len(set(documented)) == len(documented)
    assert set(documented) == set(CASES)
    assert {"spec", "data", "model", "CLI"} <= set(re.findall(r"^\| `[\w-]+` \| (\w+) \|", DOC.read_text(), re.M))


@pytest.mark.parametrize("case,excerpt", rows(), ids=[case for case, _ in rows()])
def test_bad_input_gets_its_documented_error(case, excerpt, tmp_path):
    message = CASES[case](tmp_path)
    assert excerpt in message, f"{case}: expected {excerpt!r} in {message!r}"
