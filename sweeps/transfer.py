"""What a trial's last checkpoint carries to MLflow: `artifacts/` (test embeddings, adjacency) and
`model/` (the best epoch's model as a complete MLflow model folder, written and checked by the
trial; it becomes the run's logged model). Reading it through the checkpoint works from any node
and any storage. Runs on the trial logger's writer thread, which only uploads files: the driver
never loads a model."""

from __future__ import annotations

import os

from serving.model_folder import MLMODEL
from serving.registry import log_model_folder
from sweeps.trial_runs import TrialRuns


class CheckpointTransfer:
    def __init__(self, runs: TrialRuns):
        self.runs = runs

    def _from_checkpoint(self, trial_id: str, checkpoint, name: str, write) -> None:
        """Call `write(path)` on the folder `name` of the trial's last checkpoint, if there is one.
        A checkpoint that cannot be read is tagged on the run (`artifacts_error`) and not retried;
        a failed MLflow write is retried."""
        if checkpoint is None:
            return
        try:
            opened = checkpoint.as_directory()
            folder = opened.__enter__()
        except Exception as err:  # noqa: BLE001 - a missing artifact must not fail the sweep
            self.runs.tag(trial_id, {"artifacts_error": f"{type(err).__name__}: {err}"[:4000]})
            return
        try:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                write(path)
        finally:
            opened.__exit__(None, None, None)

    def artifacts(self, trial_id: str, checkpoint) -> None:
        """Test embeddings and adjacency files go to MLflow under `artifacts/`."""
        self._from_checkpoint(trial_id, checkpoint, "artifacts", lambda path: self.runs.client.log_artifacts(
            self.runs.run_of(trial_id), path, "artifacts"))

    def model(self, trial_id: str, checkpoint) -> None:
        """The trial's MLflow model folder is uploaded as the run's logged model, its URI tagged
        `model_uri`. A `model/` without an `MLmodel` (a checkpoint of an earlier gloss) is tagged
        `model_error` rather than loaded here."""
        def log(path: str) -> None:
            if not os.path.isfile(os.path.join(path, MLMODEL)):
                self.runs.tag(trial_id, {"model_error": f"the checkpoint's model/ has no {MLMODEL} (written by an "
                                                        "earlier gloss); it was not logged"})
                return
            run_id = self.runs.run_of(trial_id)
            uri = log_model_folder(self.runs.tracking_uri, self.runs.experiment, run_id, path)
            self.runs.tag(trial_id, {"model_uri": uri})

        self._from_checkpoint(trial_id, checkpoint, "model", log)
