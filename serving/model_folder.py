"""An exported gloss model as a complete MLflow model folder, written and checked where the model
was trained (a sweep's replicate trial), so that whoever records it only uploads files.

`write_model_folder(exported, target)` wraps a `--save-model` folder as an MLflow pyfunc model
("models from code": `pyfunc_entry.py`, no pickled object) with a signature, an input example
(the card's example texts) and pinned requirements; `check_model_folder(target)` loads the written
folder as MLflow would and predicts its own input example, so a folder that does not serve fails
where it was made, with a message naming it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from gloss_core.errors import UserError
from gloss_core.export import CARD
from gloss_core.provenance import package_versions

ENTRY = str(Path(__file__).with_name("pyfunc_entry.py"))
# MLflow would otherwise load the model in a subprocess to infer these; they are known
REQUIREMENTS = ("torch", "transformers", "safetensors", "pandas", "mlflow")
MLMODEL = "MLmodel"


class ModelFolderInvalid(UserError, RuntimeError):
    """A written MLflow model folder that does not load or does not predict its input example."""


def input_example(exported: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The card's example texts as the model's input, and an output frame of the right columns."""
    from serving.pyfunc import probability_column

    card = json.loads((exported / CARD).read_text(encoding="utf-8"))
    example = pd.DataFrame(card["examples"])
    labels = card["labels"]
    output = pd.DataFrame({"prediction": [labels[0]] * len(example),
                           **{probability_column(label): [0.0] * len(example) for label in labels}})
    return example, output


def write_model_folder(exported: str | Path, target: str | Path) -> Path:
    """Write `target` (which must not exist): an MLflow pyfunc model holding a copy of `exported`
    as its artifact `model`. Nothing is loaded here; `check_model_folder` does that."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    exported, target = Path(exported), Path(target)
    example, output = input_example(exported)
    versions = package_versions(REQUIREMENTS)
    requirements = [f"{name}=={version}" for name, version in versions.items() if version != "not installed"]
    mlflow.pyfunc.save_model(path=str(target), python_model=ENTRY, artifacts={"model": str(exported)},
                             signature=infer_signature(example, output), input_example=example,
                             pip_requirements=requirements)
    return target


def check_model_folder(folder: str | Path) -> None:
    """Load `folder` with `mlflow.pyfunc.load_model` and predict its input example: one row per
    example, the signature's columns, probabilities that sum to one."""
    import mlflow.pyfunc
    from mlflow.models import Model

    folder = Path(folder)
    try:
        meta = Model.load(str(folder / MLMODEL))
        example = meta.load_input_example(str(folder))
        model = mlflow.pyfunc.load_model(str(folder))
        out = model.predict(example)
    except Exception as err:  # noqa: BLE001 - whatever breaks, the folder does not serve
        raise ModelFolderInvalid(f"{folder}: the MLflow model does not load or predict its input example "
                                 f"({type(err).__name__}: {str(err)[:300]})") from err
    expected = [column.name for column in meta.signature.outputs.inputs]
    probabilities = out[[c for c in expected if c != "prediction"]].sum(axis=1)
    if list(out.columns) != expected or len(out) != len(example) or not all(
            math.isclose(total, 1.0, abs_tol=1e-4) for total in probabilities):
        raise ModelFolderInvalid(f"{folder}: predicting the input example gave columns {list(out.columns)} and "
                                 f"{len(out)} row(s); the signature wants {expected} and {len(example)} row(s), "
                                 "probabilities summing to 1")
