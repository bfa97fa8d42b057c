"""The trial the service answers for: its dataset spec, the patient request model, the service's title and summary.

Read once at import, from the packaged spec or ``RESPONDERS_SPEC``; the other
modules of the service (contract, guards, readiness, the service class) share it.
"""

from __future__ import annotations

import os

from core.labelling import Wording
from core.spec import inline, load_spec
from serving import schemas as S

# The request schema is generated from the dataset spec, so it has to exist when
# the class is defined; reading the packaged spec (or RESPONDERS_SPEC) is the
# only work done at import.
SPEC = load_spec(os.environ.get("RESPONDERS_SPEC"))
Patient = S.patient_model(SPEC, SPEC.lab_catalog())
TITLE = f"Responder-subgroup API: {SPEC.treated_display()} vs {inline(SPEC.control_display())} ({SPEC.name})"


def _summary() -> str:
    """What the service answers for this spec's trial, in a sentence (an event to prevent as its risk)."""
    events = [o.label for o in SPEC.outcomes.values() if Wording.of(o).prevents]
    scores = [o.label for o in SPEC.outcomes.values() if not Wording.of(o).prevents]
    what = []
    if scores:
        what.append(f"the chance of a clinically meaningful response ({'; '.join(scores)}) and the difference (benefit)")
    if events:
        what.append(f"the risk of each event to prevent ({'; '.join(events)}) and the absolute risk reduction with the number needed to treat")
    return (
        f"Per patient, on {SPEC.treated_inline()} and on {SPEC.control_inline()}: {' and '.join(what)}, with an interval, "
        "the estimand they answer, a population label and, only where effect modification is established, a patient label; and why (SHAP)."
    )


SUMMARY = _summary()
