"""Moved to :mod:`core.runtime.artefact`, where training and serving import one definition.

Artefacts logged before the move name ``training.model.ResponderModel`` in their
pickle (and their stored ``pyfunc_entry.py`` imports ``ResponderPyfunc`` from
here), so this module keeps those names loadable.
"""

from core.runtime.artefact import (
    PREDICTION_COLUMNS,
    Evidence,
    ResponderModel,
    ResponderPyfunc,
    input_schema,
    model_interval,
    predictions_schema,
)

__all__ = [
    "PREDICTION_COLUMNS",
    "Evidence",
    "ResponderModel",
    "ResponderPyfunc",
    "input_schema",
    "model_interval",
    "predictions_schema",
]
