"""Section 5: the served per-patient intervals, against the observable conditional benefit, beside two baselines.

Every simulator scenario (`null`, `final`, `strong`) at n = 99, 300 and 1,000 gets section 1's work-up
(:func:`benchmarks.recovery.run_replicate`): the training job's own decisions (the default heterogeneity test with
Holm, PATH, nested CV, ``choose_answer``), the served model refitted by ``training.train.fit_champion`` and scored by
``ResponderModel.predict`` on 2,000 fresh patients. Its interval is read against each patient's observable
conditional benefit (the observable oracle, ``benchmarks/oracle.py``): coverage, mean width and Gneiting-Raftery
interval score, beside the trial average's interval given to everyone and EconML ``CausalForestDML``'s
``effect_interval`` on the same trials. Section 1 keeps the tests' level and power; this section only runs the tests
the work-up needs, so a campaign of intervals does not overwrite those figures.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmarks import recovery
from benchmarks.recovery import SCENARIOS, Settings

# About 2 minutes per trial at n = 300 and 3-4 at n = 1,000 on one core (the work-up's nested CV, the default test,
# the served model with 4 BCF chains, every candidate's interval, the peers): about 35 minutes on 2 cores.
FULL = Settings(
    sizes=(99, 300, 1000),
    scenarios=SCENARIOS,
    trials=(("null", (3, 3, 2)), ("final", (4, 4, 3)), ("strong", (4, 4, 3))),
    bootstrap_trials=(("null", (3, 3, 2)), ("final", (4, 4, 3)), ("strong", (4, 4, 3))),
    permutation_trials=(),
    full_trials=(("null", (3, 3, 2)), ("final", (4, 4, 3)), ("strong", (4, 4, 3))),
    bcf_posterior=False,  # the uncalibrated BCF rule is section 1's
    earlier_budget=False,  # the job's own budget decides the answer; the earlier one's verdict is section 1's
    seed=7500,  # trials of their own (section 1's start at 7000)
)
QUICK = replace(
    recovery.QUICK,
    sizes=(99,),
    scenarios=("null", "strong"),
    trials=(("null", (1,)), ("strong", (1,))),
    bootstrap_trials=(("null", (1,)), ("strong", (1,))),
    permutation_trials=(),
    full_trials=(("null", (1,)), ("strong", (1,))),
    bcf_posterior=False,
    earlier_budget=False,
)


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> str:
    """Run section 5 and return its Markdown; per-trial rows go to ``out_dir/intervals.parquet`` (and ``.csv``)."""
    settings = settings or (QUICK if quick else FULL)
    c = recovery.campaign(settings, out_dir, "intervals", recovery.stored_campaigns(quick, out_dir))
    return render(c, settings, quick)


def render(c: recovery.Campaign, settings: Settings, quick: bool) -> str:
    trials = c.frame.drop_duplicates(["scenario", "n", "replicate"]).shape[0] if len(c.frame) else 0
    versions = recovery._peer_versions()
    parts = [
        "## 5. Per-patient intervals",
        "",
        f"{'QUICK smoke run: figures are not estimates. ' if quick else ''}"
        f"{trials} simulated trials in {c.seconds / 60:.1f} min. Means are over trials, ± their Monte-Carlo standard error."
        + (f" {c.note}" if c.note else ""),
        "",
        *settings.describe(cut_short=bool(c.note)),
        recovery.timing_line(c.frame, settings),
        f"- Peer: EconML {versions['econml'] or 'not installed'} `CausalForestDML` ({settings.forest_trees} trees, its own "
        f"`effect_interval`); BCF: stochtree {versions['stochtree'] or 'not installed'}.",
        "",
        *recovery.oracle_markdown(settings, c.oracles, c.observable, c.cached),
    ]
    if recovery._cell(c.frame, "method").empty:
        return "\n".join([*parts, "", "No trial of this run finished its work-up: no intervals to show."]) + "\n"
    return "\n".join([*parts, *recovery.work_up_markdown(c.frame, settings)]) + "\n"
