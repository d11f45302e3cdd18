"""MLflow's side of the models a sweep keeps.

- `log_model_folder`: a complete MLflow model folder, written and checked by the replicate trial
  that trained it (`serving/model_folder.py`), uploaded as an MLflow logged model of the trial's
  run; the uploader never loads the model. `log_exported_model` writes, checks and uploads a
  `--save-model` folder in one process.
- `register`: a cell's chosen replicate goes into the Model Registry as a new version of
  `<sweep>.<cell>`, its tags carrying the cell's test mean ± std and the run id, and the alias
  `best` moves to it.
- `load_saved_model`: a model folder, `runs:/RUN/model`, `models:/NAME/VERSION`,
  `models:/NAME/latest` or `models:/NAME@ALIAS` back to a `SavedModel`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gloss_core.errors import UserError
from gloss_core.export import SavedModel, load_model
from gloss_core.provenance import redact
from gloss_core.provenance import quiet_mlflow as quiet_console
from serving.model_folder import MLMODEL

MODEL_NAME = "model"  # the logged model's name within its run: runs:/RUN/model
BEST = "best"  # the alias of a cell's chosen version: models:/NAME@best


def quiet_mlflow() -> None:
    """No download or loading progress bars and no INFO lines from MLflow in the console."""
    from transformers.utils import logging as transformers_logging

    quiet_console()
    transformers_logging.disable_progress_bar()


def log_model_folder(tracking_uri: str, experiment_id: str, run_id: str, folder: str | Path) -> str:
    """Upload a complete MLflow model folder (`serving/model_folder.py` wrote and checked it) as
    run `run_id`'s logged model `model`; returns its `models:/m-...` URI. Files and records only:
    nothing here imports or loads the model."""
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    folder = Path(folder)
    if not (folder / MLMODEL).is_file():
        raise FileNotFoundError(f"{folder}: not an MLflow model folder (no {MLMODEL})")
    client = mlflow.MlflowClient(tracking_uri)
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
    client.log_model_artifacts(logged.model_id, str(folder))
    meta = Model.load(str(folder / MLMODEL))  # the YAML file alone: which run and logged model it is
    meta.run_id, meta.model_id, meta.model_uuid, meta.artifact_path = (
        run_id, logged.model_id, logged.model_id, logged.artifact_location)
    with tempfile.TemporaryDirectory() as scratch:
        meta.save(os.path.join(scratch, MLMODEL))
        client.log_model_artifact(logged.model_id, os.path.join(scratch, MLMODEL))
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}"


def log_exported_model(tracking_uri: str, experiment_id: str, run_id: str, folder: str | Path) -> str:
    """A `--save-model` folder as run `run_id`'s logged model, written and checked in this process
    (a sweep's trials do both steps themselves); returns its `models:/m-...` URI."""
    from serving.model_folder import check_model_folder, write_model_folder

    quiet_mlflow()
    with tempfile.TemporaryDirectory() as scratch:
        target = write_model_folder(folder, Path(scratch) / MODEL_NAME)
        check_model_folder(target)
        return log_model_folder(tracking_uri, experiment_id, run_id, target)


def register(client, name: str, model_uri: str, run_id: str, tags: dict[str, str], alias: str | None = None) -> str:
    """A new version of registered model `name` from a logged model, `alias` (if given) moved to
    it; returns the version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(client.tracking_uri)  # the registry finds a models:/m-... source through it
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = str(client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags,
                                              model_id=model_id).version)
    if alias is not None:
        client.set_registered_model_alias(name, alias, version)
    return version


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


def _aliased_version(client, name: str, alias: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        raise ModelNotFound(f"models:/{name}@{alias}: registered model {name!r} has no alias {alias!r} "
                            f"(or does not exist) in {redact(client.tracking_uri)}") from err


def load_saved_model(reference: str, tracking_uri: str | None = None) -> SavedModel:
    """A model folder, `runs:/RUN/model`, `models:/NAME/VERSION`, `models:/NAME/latest` or
    `models:/NAME@ALIAS` (a sweep sets `@best` on each cell's chosen version)."""
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
        if not version and "@" in name:
            name, _, alias = name.rpartition("@")
            version = _aliased_version(client, name, alias)
        if not version:
            raise ModelNotFound(f"{reference}: give a version, models:/NAME/VERSION, models:/NAME/latest or "
                                "models:/NAME@ALIAS")
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
