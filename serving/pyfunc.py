"""The MLflow pyfunc flavour of an exported gloss model.

`mlflow.pyfunc.load_model(uri).predict(frame)` takes a DataFrame with a `text` column (and
`text_pair` for pair models) and returns one row per input: `prediction` (the label name) and one
probability column per class, `prob_<label>`. The wrapped folder is the one `gloss train
--save-model` writes; `unwrap_python_model().saved` is the loaded `SavedModel`.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from gloss_core.export import SavedModel, load_model


def probability_column(label: str) -> str:
    return f"prob_{label}"


def predictions_frame(saved: SavedModel, probabilities) -> pd.DataFrame:
    """`prediction` (label names) and one probability column per class."""
    out = pd.DataFrame({"prediction": [saved.labels[i] for i in probabilities.argmax(dim=1).tolist()]})
    for i, label in enumerate(saved.labels):
        out[probability_column(label)] = probabilities[:, i].double().numpy()
    return out


class GlossPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the exported folder (artifact `model`) once; predicts in the model's own batch size."""

    def load_context(self, context) -> None:
        self.saved = load_model(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        pairs = model_input["text_pair"].astype(str).tolist() if self.saved.pair else None
        probabilities = self.saved.predict_proba(model_input["text"].astype(str).tolist(), pairs)
        return predictions_frame(self.saved, probabilities)
