"""The file MLflow logs as the model's code ("models from code"): no pickled object is stored, and
loading the model imports `serving.pyfunc` from the installed gloss package."""

from mlflow.models import set_model

from serving.pyfunc import GlossPyfunc

set_model(GlossPyfunc())
