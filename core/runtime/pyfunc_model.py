"""MLflow's pyfunc wrapper of a :class:`~core.runtime.artefact.ResponderModel` (what ``mlflow models serve`` runs).

Apart from :mod:`core.runtime.artefact` so that loading and scoring a model
does not import MLflow; ``core.runtime.artefact.ResponderPyfunc`` (the name
every stored model's ``pyfunc_entry.py`` imports) is this class.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from core.runtime.artefact import ResponderModel, load_artefact


class ResponderPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around a :class:`ResponderModel` stored as a joblib artifact.

    ``params={"output": "predictions"}`` (default) returns the prediction
    columns; ``"contributions"`` returns SHAP contributions (probability
    points) to the benefit and to P(responder | naltrexone), one row per
    patient and feature.
    """

    def load_context(self, context):
        self.model: ResponderModel = load_artefact(context.artifacts["responder"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        raw = _as_frame(model_input)
        output = (params or {}).get("output", "predictions")
        if output == "contributions":
            explanation, _ = self.model.explain(raw)
            rows = []
            for i in range(len(raw)):
                for j, name in enumerate(explanation.features):
                    rows.append(
                        {
                            "row": i,
                            "feature": name,
                            "benefit": explanation.benefit.values[i, j],
                            "p_response_treated": explanation.p_treated.values[i, j],
                        }
                    )
            return pd.DataFrame(rows)
        return self.model.predict(raw).reset_index(drop=True)


def _as_frame(model_input: Any) -> pd.DataFrame:
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    return frame.reset_index(drop=True)
