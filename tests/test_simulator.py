"""The simulator reproduces the published FINAL figures and is deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.simulate import simulate

PUBLISHED_CHANGE = {("pain", "naltrexone"): -1.3, ("pain", "placebo"): -0.9, ("memory", "naltrexone"): -1.4, ("memory", "placebo"): -0.5}


@pytest.fixture(scope="module", params=["final", "null"])
def large(request) -> tuple[str, pd.DataFrame]:
    return request.param, simulate(request.param, 40_000, 7)


def test_large_sample_arm_means_match_published(large):
    scenario, frame = large
    for (outcome, arm), published in PUBLISHED_CHANGE.items():
        rows = frame["arm"] == arm
        change = (frame[f"{outcome}_week12"] - frame[f"{outcome}_baseline"])[rows].mean()
        assert abs(change - published) < 0.1, (scenario, outcome, arm, change)
    assert abs(frame["age"].mean() - 50.6) < 0.5
    assert abs(frame["pain_baseline"].mean() - 6.3) < 0.1
    assert abs(frame["memory_baseline"].mean() - 5.7) < 0.1
    assert frame["pain_baseline"].min() >= 4.0
    assert (frame["sex"] == "female").all()
    pain_change = frame["pain_week12"] - frame["pain_baseline"]
    for arm in ("naltrexone", "placebo"):
        assert 1.4 < pain_change[frame["arm"] == arm].std() < 1.8


def test_responder_rates_near_published(large):
    _, frame = large
    relative = (frame["pain_baseline"] - frame["pain_week12"]) / frame["pain_baseline"]
    rates = (relative >= 0.3).groupby(frame["arm"]).mean()
    assert 0.38 < rates["naltrexone"] < 0.50  # published 45%
    assert 0.24 < rates["placebo"] < 0.33  # published 28%


def test_heterogeneity_only_in_final(large):
    scenario, frame = large
    spread = frame["true_benefit_pain"].std()
    if scenario == "final":
        assert spread > 0.08
        assert 0.2 < frame["true_responder_subgroup"].mean() < 0.4
    else:
        assert spread < 0.02


def test_deterministic_and_lab_export_look():
    a = simulate("final", 99, 11)
    b = simulate("final", 99, 11)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(simulate("final", 99, 12))
    assert (a["arm"] == "naltrexone").sum() == 49 and (a["arm"] == "placebo").sum() == 50
    labs = a[["crp", "il6", "il1b", "anti_tpo", "rf"]].astype(str)
    assert labs.apply(lambda col: col.str.startswith("<")).to_numpy().any()
    assert a["ana"].dropna().str.match(r"^(1:\d+|negative|NEG)$").all()
    assert a[["crp", "anti_sgc", "il6"]].isna().to_numpy().any()
    assert np.isfinite(a.filter(like="true_benefit").to_numpy()).all()


def test_default_draw_is_the_searched_seed_closest_to_the_published_trial():
    """One default draw, named in one place, chosen on the published summary figures only (training/published.py)."""
    import inspect
    import re
    from pathlib import Path

    from training import cli
    from training.published import (
        DEFAULT_DISTANCE,
        DEFAULT_SEED,
        SEARCH_SEEDS,
        SEED_2024_DISTANCE,
        distance,
        distance_terms,
        search_seeds,
    )

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert re.search(r"^SEED \?= (\d+)$", makefile, re.M).group(1) == str(DEFAULT_SEED)
    assert inspect.signature(cli.simulate).parameters["seed"].default == DEFAULT_SEED
    assert DEFAULT_SEED in SEARCH_SEEDS

    default = simulate("final", 99, DEFAULT_SEED)
    assert distance(default) == pytest.approx(DEFAULT_DISTANCE, abs=1e-3)
    assert distance(simulate("final", 99, 2024)) == pytest.approx(SEED_2024_DISTANCE, abs=1e-2)
    # What issue 15 found wrong with seed 2024: pain ANCOVA p = 0.031 (published 0.27), placebo memory +0.1 (-0.5).
    terms = {t.key: t for t in distance_terms(default)}
    assert terms["pain_p"].simulated > 0.1 and terms["memory_p"].simulated < 0.05
    assert terms["memory_change_control"].simulated < 0 and all(abs(t.z) < 1 for t in terms.values())
    # The search keeps the smallest distance.
    ranked = search_seeds([2024, 1, DEFAULT_SEED, 2])
    assert ranked["seed"].iat[0] == DEFAULT_SEED and ranked["distance"].is_monotonic_increasing
