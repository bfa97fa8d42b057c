"""Quickstart: simulate a small trial, fit the responder models, predict, explain; no MLflow, no files.

    .venv/bin/python examples/quickstart.py

Runs in about a minute on two cores with the smoke settings
(``core/configs/smoke.yaml``: tiny cross-validation and posterior, for a
demonstration, not for estimates). For a real analysis drop ``config`` to get
the defaults of ``core/configs/default.yaml``. tests/test_examples.py runs this
script.
"""

from __future__ import annotations

from core.config import smoke_config
from core.spec import load_spec
from training.estimator import ResponderEstimator
from training.simulate import simulate


def main() -> None:
    spec = load_spec()  # the default spec: low-dose naltrexone vs placebo in fibromyalgia
    trial = simulate("strong", 400, seed=8)  # simulated patients in the data contract, with a strong subgroup
    fitted = ResponderEstimator(spec, smoke_config()).fit(trial)

    print("Heterogeneity test per outcome (Holm-adjusted):")
    for outcome, test in fitted.heterogeneity_test().items():
        print(f"  {outcome}: p = {test['p_value']:.3f}, adjusted {test['p_adjusted']:.3f}; answer {test['answer']} ({test['champion']})")

    print("Nested cross-validation (out-of-fold mean Brier score per candidate):")
    for outcome, summary in fitted.evaluate().items():
        print(f"  {outcome}: " + ", ".join(f"{name} {row['brier_mean']:.3f}" for name, row in summary.iterrows()))

    patients = trial.head(3).drop(columns=[c for c in trial.columns if c.startswith("true_")])
    print("Benefit and interval for three patients:")
    print(fitted.benefit_interval(patients).round(3).to_string(index=False))

    print("The first patient's strongest drivers (SHAP, probability points):")
    for outcome, [explanation] in fitted.explain(patients.head(1)).items():
        shown = explanation.benefit if explanation.shows_benefit_drivers else explanation.p_response_control
        for driver in shown.drivers[:2]:
            print(f"  {outcome} ({shown.target}): {driver.sentence}")
        if not shown.drivers:
            print(f"  {outcome}: the same answer for every patient (no patient drivers)")


if __name__ == "__main__":
    main()
