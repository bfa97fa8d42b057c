"""The published FINAL trial's summary figures, and how far a simulated draw is from them.

The default simulated trial (``make train``; ``responders simulate`` without
``--seed``) is one draw of n = 99 from the ``final`` scenario. Any single draw
of 99 patients wanders from the published figures by sampling error, so the
default draw is chosen, once and reproducibly, as the seed whose trial is
closest to the published summary figures:

- the **distance** of a draw is the sum of squared standardised differences
  over the eleven published figures in :data:`FIGURES` (arm means of the
  12-week change in pain and memory, the two ANCOVA p-values on the normal
  scale, the >= 30% pain responder rates, mean age and the baseline means of
  pain and memory); each difference is divided by that figure's standard
  error at the trial's size (:func:`distance_terms`), so a draw from a
  perfectly calibrated simulator scores about 11 on average;
- the search (:func:`search_seeds`) simulates every seed of
  :data:`SEARCH_SEEDS` and keeps the one with the smallest distance. It uses
  the trial's summary figures only, never a model result, so it cannot favour
  any candidate or verdict.

``python -m training.published`` reruns the search and prints the figures
(about three minutes on one core). :data:`DEFAULT_SEED` holds its result; the
Makefile's ``SEED`` names the same draw (a test checks that they agree and
that the recorded distance is reproduced).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numerical libraries load only when a distance is computed: the CLI reads DEFAULT_SEED at start-up
    import numpy as np
    import pandas as pd

CITATION = "Bruun et al., Lancet Rheumatology 2024;6:e31-e39 (FINAL trial, NCT04270877)"

# Displayed beside the simulated trial's results (DESIGN section 1).
PUBLISHED_FINAL: dict[str, Any] = {
    "citation": CITATION,
    "n": {"treated": 49, "control": 50},
    "age": "50.6 (8.8)",
    "baseline": {"pain_baseline": "6.3", "memory_baseline": "5.7"},
    "changes": {
        "pain": {"treated": "-1.3 (-1.7 to -0.8)", "control": "-0.9 (-1.4 to -0.5)", "p": "0.27"},
        "memory": {"treated": "-1.4", "control": "-0.5", "p": "0.004"},
    },
    "responders": {"pain": {"treated": "45%", "control": "28%"}},
}

# The seeds searched and the result (rerun with `python -m training.published`): seed 417 has the
# smallest distance of seeds 1-2000 (1.09; median over the 2000 draws 10.09). Seed 2024, the default
# before the search, has 24.38: its pain ANCOVA p is 0.031 (published 0.27) and its placebo memory
# change +0.1 (published -0.5).
SEARCH_SEEDS = range(1, 2001)
DEFAULT_SEED = 417
DEFAULT_DISTANCE = 1.0895
SEARCH_MEDIAN_DISTANCE = 10.09
SEED_2024_DISTANCE = 24.38


@dataclass(frozen=True)
class Figure:
    """One published summary figure and how the simulated trial's counterpart is standardised."""

    key: str
    label: str
    published: float
    scale: str  # "mean" (SE = SD / sqrt(n) in the draw), "p" (normal scale, SE 1) or "rate" (binomial SE at the published rate)
    shown: str  # how the published figure is written


FIGURES: tuple[Figure, ...] = (
    Figure("pain_change_treated", "Pain change, naltrexone", -1.3, "mean", "-1.3"),
    Figure("pain_change_control", "Pain change, placebo", -0.9, "mean", "-0.9"),
    Figure("pain_p", "Pain, ANCOVA p-value", 0.27, "p", "P = 0.27"),
    Figure("memory_change_treated", "Memory change, naltrexone", -1.4, "mean", "-1.4"),
    Figure("memory_change_control", "Memory change, placebo", -0.5, "mean", "-0.5"),
    Figure("memory_p", "Memory, ANCOVA p-value", 0.004, "p", "P = 0.004"),
    Figure("responders_treated", ">= 30% pain responders, naltrexone", 0.45, "rate", "45%"),
    Figure("responders_control", ">= 30% pain responders, placebo", 0.28, "rate", "28%"),
    Figure("age", "Age, mean", 50.6, "mean", "50.6"),
    Figure("pain_baseline", "Baseline pain, mean", 6.3, "mean", "6.3"),
    Figure("memory_baseline", "Baseline memory problems, mean", 5.7, "mean", "5.7"),
)


@dataclass
class Term:
    key: str
    label: str
    simulated: float
    published: float
    shown: str
    standard_error: float
    z: float  # (simulated - published) / standard error, on the scale of the figure

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z_of_p(p: float) -> float:
    """A two-sided p-value as the normal deviate that gives it (0.27 -> 1.10, 0.004 -> 2.88)."""
    from scipy import stats

    return float(stats.norm.isf(max(p, 1e-300) / 2))


def _ancova_p(base: np.ndarray, follow: np.ndarray, treated: np.ndarray) -> float:
    """Two-sided p-value of the arm in the OLS of change on arm and baseline (complete cases), as in the report."""
    import numpy as np
    from scipy import stats

    ok = np.isfinite(base) & np.isfinite(follow)
    design = np.column_stack([np.ones(ok.sum()), treated[ok].astype(float), base[ok]])
    change = follow[ok] - base[ok]
    coef, *_ = np.linalg.lstsq(design, change, rcond=None)
    resid = change - design @ coef
    dof = ok.sum() - design.shape[1]
    sigma2 = float(resid @ resid) / dof
    se = math.sqrt(sigma2 * np.linalg.inv(design.T @ design)[1, 1])
    return float(2 * stats.t.sf(abs(coef[1] / se), dof))


def distance_terms(frame: pd.DataFrame) -> list[Term]:
    """The standardised difference of each published figure for a trial in the default data contract."""
    import numpy as np
    import pandas as pd

    treated = frame["arm"].astype(str).eq("naltrexone").to_numpy()
    values: dict[str, tuple[float, float]] = {}  # key -> (simulated value, its SD for "mean" figures)

    def number(column: str) -> np.ndarray:
        return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)

    for outcome in ("pain", "memory"):
        base, follow = number(f"{outcome}_baseline"), number(f"{outcome}_week12")
        change = follow - base
        for arm, rows in (("treated", treated), ("control", ~treated)):
            x = change[rows & np.isfinite(change)]
            values[f"{outcome}_change_{arm}"] = (float(np.mean(x)), float(np.std(x, ddof=1)) / math.sqrt(len(x)))
        values[f"{outcome}_p"] = (_ancova_p(base, follow, treated), 1.0)
        values[f"{outcome}_baseline"] = (float(np.nanmean(base)), float(np.nanstd(base, ddof=1)) / math.sqrt(np.isfinite(base).sum()))
    pain_base, pain_follow = number("pain_baseline"), number("pain_week12")
    with np.errstate(invalid="ignore", divide="ignore"):
        responder = (pain_base - pain_follow) / pain_base >= 0.3
    for arm, rows in (("treated", treated), ("control", ~treated)):
        values[f"responders_{arm}"] = (float(responder[rows].mean()), float(rows.sum()))
    age = number("age")
    values["age"] = (float(np.nanmean(age)), float(np.nanstd(age, ddof=1)) / math.sqrt(np.isfinite(age).sum()))

    terms = []
    for figure in FIGURES:
        simulated, spread = values[figure.key]
        if figure.scale == "p":
            se, z = 1.0, _z_of_p(simulated) - _z_of_p(figure.published)
        elif figure.scale == "rate":
            se = math.sqrt(figure.published * (1 - figure.published) / spread)
            z = (simulated - figure.published) / se
        else:
            se = spread
            z = (simulated - figure.published) / se
        terms.append(Term(figure.key, figure.label, simulated, figure.published, figure.shown, se, float(z)))
    return terms


def distance(frame: pd.DataFrame) -> float:
    """Sum of squared standardised differences from the published figures (about 11 for a typical draw)."""
    return float(sum(t.z**2 for t in distance_terms(frame)))


def search_seeds(seeds=SEARCH_SEEDS, n: int = 99) -> pd.DataFrame:
    """Distance of the ``final`` scenario's draw of ``n`` patients for every seed, smallest first."""
    import pandas as pd

    from training.simulate import simulate

    rows = [{"seed": int(seed), "distance": distance(simulate("final", n, int(seed)))} for seed in seeds]
    return pd.DataFrame(rows).sort_values(["distance", "seed"], kind="stable").reset_index(drop=True)


def comparison(frame: pd.DataFrame, seed: int | None) -> dict[str, Any]:
    """The cohort report's 'how close is this draw to the published trial' block (JSON-able)."""
    terms = distance_terms(frame)
    return {
        "distance": float(sum(t.z**2 for t in terms)),
        "terms": [t.to_dict() for t in terms],
        "n_figures": len(terms),
        "seed": seed,
        "default_seed": DEFAULT_SEED,
        "is_default": seed == DEFAULT_SEED,
        "search": {
            "first": SEARCH_SEEDS[0],
            "last": SEARCH_SEEDS[-1],
            "median_distance": SEARCH_MEDIAN_DISTANCE,
            "default_distance": DEFAULT_DISTANCE,
            "seed_2024_distance": SEED_2024_DISTANCE,
        },
    }


def main() -> None:  # pragma: no cover - a one-off, documented search
    ranked = search_seeds()
    best = int(ranked["seed"].iat[0])
    print(f"searched seeds {SEARCH_SEEDS[0]}-{SEARCH_SEEDS[-1]}: median distance {ranked['distance'].median():.2f}")
    print(ranked.head(10).to_string(index=False))
    from training.simulate import simulate

    print(f"seed 2024 (the former default): distance {distance(simulate('final', 99, 2024)):.4f}")

    for term in distance_terms(simulate("final", 99, best)):
        print(f"  {term.label:40s} simulated {term.simulated:8.3f}  published {term.published:7.3f}  z {term.z:+.2f}")


if __name__ == "__main__":  # pragma: no cover
    main()
