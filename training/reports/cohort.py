"""The cohort report: for the data scientist and trial statistician, does the model and the subgroup claim hold up?

Rendered from a :class:`~training.reports.payload.CohortPayload` only, so a
training job and ``responders report cohort --run RUN_ID`` (from MLflow) give
the same report.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from tqdm.auto import tqdm

from core.candidates import FLOOR
from core.reports import figures
from core.reports.render import environment
from core.spec import inline
from training import plots
from training.reports.evaluation import evaluation_steps
from training.reports.payload import CohortPayload

log = logging.getLogger("responders.reports")

TEMPLATE = "cohort.html.j2"

# TRIPOD+AI (Collins et al., BMJ 2024;385:e078378) main items this report covers, and where.
TRIPOD_COVERED = [
    ("3b", "Target population and intended users", "Model card: intended use"),
    ("5a", "Data sources", "Data provenance; model card"),
    ("7", "Data preparation", "Model card: data preparation (lab parsing, units, detection limits)"),
    ("8", "Outcome definition", "Responder rates (rule per outcome); outcome changes"),
    ("9", "Predictors", "SHAP summary and dependence plots (engineered features with units)"),
    ("10", "Sample size", "Table 1 (n per arm); model card limitations (no sample-size calculation for subgroups)"),
    ("11", "Missing data", "Table 1 (% missing per lab); model card: median imputation with indicators"),
    ("12", "Analytical methods", "Candidate comparison; heterogeneity evidence (nested CV, permutation test, Holm)"),
    ("15", "Model output", "Model card: what the model returns and how labels are assigned"),
    ("16", "Training versus evaluation", "Same trial for both: internal validation by nested cross-validation, every metric out of fold"),
    ("20", "Participants", "Table 1 by arm; outcome changes"),
    ("21", "Model development (participants and outcome events)", "Candidate comparison (n patients, responders)"),
    ("22", "Model specification", "Model card: champion candidate and registry version"),
    ("23", "Model performance", "Candidate comparison with bootstrap intervals for AUC and Brier; calibration plots; Qini and TOC "
     "curves with bootstrap bands; AUTOC (a description, without an interval); calibration for benefit; decision curve; prespecified subgroups"),
    ("25", "Interpretation", "Heterogeneity evidence verdict"),
    ("26", "Limitations", "Model card: limitations"),
    ("27", "Usability in context", "Model card: intended use, not a substitute for clinical judgement, input warnings"),
]
TRIPOD_NOT_COVERED = (
    "1-2 (title, abstract), 3a and 3c (context, health inequalities), 4 (objectives), 5b and 6 (dates, setting, "
    "eligibility, treatments: see the trial protocol), 13 (class imbalance), 14 (fairness: not assessed), 17-19 "
    "(ethics, open science, patient involvement) and 24 (model updating) belong to the study write-up, not this report."
)


def _shap_views(payload: CohortPayload, outcome: str):
    meta = payload.outcomes[outcome]["shap"]
    names = meta["labels"]
    features = payload.part(outcome, "features").to_numpy(dtype=float)
    base = payload.part(outcome, "base")
    benefit = figures.explanation(payload.part(outcome, "shap_benefit").to_numpy(), base["base_benefit"].to_numpy(), features, names)
    treated = figures.explanation(payload.part(outcome, "shap_p_treated").to_numpy(), base["base_p_treated"].to_numpy(), features, names)
    return meta, benefit, treated


def _figure_steps(payload: CohortPayload) -> list[tuple[str, str, Callable]]:
    """(outcome, figure key, builder) for every figure in the report."""
    meta = payload.meta
    labels = (meta["spec"]["treated"], meta["spec"]["control"])
    seed = int(meta["config"]["seed"])
    steps: list[tuple[str, str, Callable]] = []
    for outcome, info in payload.outcomes.items():
        oof = payload.part(outcome, "oof")
        steps += [(outcome, key, build) for key, build in evaluation_steps(outcome, oof, info["evidence"], labels, seed, info["metrics"])]
        if info["subgroups"]["groups"]:

            def forest(outcome=outcome, info=info):
                return plots.forest_figure(info["subgroups"], f"{outcome}: prespecified subgroups")

            steps.append((outcome, "forest", forest))
        if info["champion"] == FLOOR:
            continue  # the floor's prediction does not depend on any value: nothing to attribute

        def beeswarm(outcome=outcome):
            _, benefit, _ = _shap_views(payload, outcome)
            return figures.beeswarm_figure(benefit, f"{outcome}: drivers of the predicted benefit ({labels[0]} minus {labels[1]})")

        def bar(outcome=outcome):
            _, _, treated = _shap_views(payload, outcome)
            return figures.bar_figure(treated, f"{outcome}: drivers of P(responder | {inline(labels[0])})")

        steps += [(outcome, "beeswarm", beeswarm), (outcome, "bar_treated", bar)]
        for group in ("inflammation", "autoantibody"):
            feature = info["shap"][f"top_{group}"]
            if feature is None:
                continue

            def dependence(outcome=outcome, feature=feature, group=group):
                shap_meta, benefit, _ = _shap_views(payload, outcome)
                j = shap_meta["features"].index(feature)
                return figures.dependence_figure(benefit[:, j], f"{outcome}: top {group} feature", shap_meta["descriptions"][j])

            steps.append((outcome, f"dependence_{group}", dependence))
    return steps


def cohort_figures(
    payload: CohortPayload, progress: bool = True, drawn: dict[str, dict[str, str]] | None = None
) -> dict[str, dict[str, str]]:
    """Draw every figure of the cohort report: outcome -> figure key -> PNG ``data:`` URI.

    ``drawn`` holds figures already drawn from the same data (the training job's
    evaluation plots); they are reused, not drawn again.
    """
    started = time.perf_counter()
    drawn = drawn or {}
    images: dict[str, dict[str, str]] = {outcome: dict(drawn.get(outcome, {})) for outcome in payload.outcomes}
    steps = [step for step in _figure_steps(payload) if step[1] not in images[step[0]]]
    # A bar on a terminal (disable=None: off when stderr is not a tty); log lines per outcome for job logs.
    bar = tqdm(total=len(steps), desc="cohort report", unit="figure", disable=None if progress else True, leave=False)
    for k, (outcome, key, build) in enumerate(steps):
        bar.set_postfix_str(f"{outcome} {key}")
        images[outcome][key] = figures.data_uri(build())
        bar.update()
        if k + 1 == len(steps) or steps[k + 1][0] != outcome:
            log.info("cohort report: %s: %d figures drawn (%.1f s)", outcome, len(images[outcome]), time.perf_counter() - started)
    bar.close()
    return images


def render_cohort_report(payload: CohortPayload, progress: bool = True, images: dict[str, dict[str, str]] | None = None) -> str:
    """Render the cohort report (self-contained HTML) from a payload, drawing its figures unless given."""
    started = time.perf_counter()
    images = images if images is not None else cohort_figures(payload, progress)
    html = environment("training.reports").get_template(TEMPLATE).render(
        m=payload.meta,
        outcomes=payload.outcomes,
        images=images,
        tripod=TRIPOD_COVERED,
        tripod_not_covered=TRIPOD_NOT_COVERED,
        rendered=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    log.info("cohort report rendered: %.0f kB, %.1f s", len(html) / 1024, time.perf_counter() - started)
    return html


def png_from_uri(uri: str) -> bytes:
    """The PNG inside a ``data:`` URI (to log a report figure as a file)."""
    return base64.b64decode(uri.split(",", 1)[1])
