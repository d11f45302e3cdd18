"""MLflow's side of the models a sweep keeps.

- `log_exported_model`: a replicate trial's exported folder becomes an MLflow logged model of the
  trial's run (pyfunc flavour, "models from code", with an input example and a signature).
- `register`: a cell's chosen replicate goes into the Model Registry as a new version of
  `<sweep>.<cell>`, its tags carrying the cell's test mean ± std and the run id.
- `load_saved_model`: a model folder, `runs:/RUN/model`, `models:/NAME/VERSION` or
  `models:/NAME/latest` back to a `SavedModel`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from gloss_core.errors import UserError
from gloss_core.export import CARD, SavedModel, load_model
from gloss_core.provenance import package_versions, redact
from gloss_core.provenance import quiet_mlflow as quiet_console

MODEL_NAME = "model"  # the logged model's name within its run: runs:/RUN/model
ENTRY = str(Path(__file__).with_name("pyfunc_entry.py"))
# MLflow would otherwise load the model in a subprocess to infer these; they are known
REQUIREMENTS = ("torch", "transformers", "safetensors", "pandas", "mlflow")


def quiet_mlflow() -> None:
    """No download or loading progress bars and no INFO lines from MLflow in the console."""
    from transformers.utils import logging as transformers_logging

    quiet_console()
    transformers_logging.disable_progress_bar()


def _example(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from serving.pyfunc import probability_column

    card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    example = pd.DataFrame(card["examples"])
    labels = card["labels"]
    output = pd.DataFrame({"prediction": [labels[0]] * len(example),
                           **{probability_column(label): [0.0] * len(example) for label in labels}})
    return example, output


def log_exported_model(tracking_uri: str, experiment_id: str, run_id: str, folder: str | Path) -> str:
    """Log the folder as run `run_id`'s logged model; returns its `models:/m-...` URI."""
    import mlflow
    from mlflow.models import Model, infer_signature

    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri)  # Model.log reads the process's tracking URI
    client = mlflow.MlflowClient(tracking_uri)
    folder = Path(folder)
    example, output = _example(folder)
    versions = package_versions(REQUIREMENTS)
    requirements = [f"{name}=={version}" for name, version in versions.items() if version != "not installed"]
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
    info = Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, python_model=ENTRY,
                     artifacts={"model": str(folder)}, signature=infer_signature(example, output),
                     input_example=example, pip_requirements=requirements, model_id=logged.model_id, run_id=run_id)
    return info.model_uri


def register(client, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` from a logged model; returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)
    return str(version.version)


def delete_registered(client, names: list[str]) -> list[str]:
    """Delete these registered models (a sweep discarded with --restart); returns those deleted."""
    from mlflow.exceptions import MlflowException

    deleted = []
    for name in names:
        try:
            client.delete_registered_model(name)
            deleted.append(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    return deleted


class ModelNotFound(UserError, LookupError):
    """A model reference that names nothing loadable; the message says what was looked for."""


def _latest_version(client, name: str) -> str:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise ModelNotFound(f"no registered model {name!r} (or it has no version)")
    return str(max(int(v.version) for v in versions))


def load_saved_model(reference: str, tracking_uri: str | None = None) -> SavedModel:
    """A model folder, `runs:/RUN/model`, `models:/NAME/VERSION` or `models:/NAME/latest`."""
    if "://" not in reference and ":/" not in reference:
        if not Path(reference).exists():
            raise ModelNotFound(f"{reference}: no such model folder")
        return load_model(reference)
    import mlflow
    from mlflow.exceptions import MlflowException

    quiet_mlflow()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    if reference.startswith("models:/") and not reference.startswith("models:/m-"):
        name, _, version = reference.removeprefix("models:/").partition("/")
        if not version:
            raise ModelNotFound(f"{reference}: give a version, models:/NAME/VERSION or models:/NAME/latest")
        try:
            version = _latest_version(client, name) if version == "latest" else version
            client.get_model_version(name, version)
        except MlflowException as err:
            raise ModelNotFound(f"{reference}: no version {version!r} of registered model {name!r} in "
                                f"{redact(mlflow.get_tracking_uri())}") from err
        reference = f"models:/{name}/{version}"
    try:
        model = mlflow.pyfunc.load_model(reference)
    except (MlflowException, OSError) as err:
        raise ModelNotFound(f"{reference}: cannot be loaded from {redact(mlflow.get_tracking_uri())} "
                            f"({str(err)[:300]})") from err
    return model.unwrap_python_model().saved
