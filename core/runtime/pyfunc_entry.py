"""MLflow "models from code" entry point: MLflow stores this file with each model and runs it on load."""

import mlflow

from core.runtime.artefact import ResponderPyfunc

mlflow.models.set_model(ResponderPyfunc())
