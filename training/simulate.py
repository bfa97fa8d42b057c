"""A FINAL-calibrated trial simulator: the validation harness, not a source of findings.

``simulate(scenario, n, seed)`` draws a trial in the ``fibromyalgia-ldn`` data
contract with ground truth in ``true_*`` columns. Every parameter lives in
:data:`CALIBRATION` (or in :data:`SCENARIOS`) with its source or marked as a
stated assumption.

Mechanism (documented for biostatisticians; see docs/data-contract.md, "The simulator", for the summary):

1. Baseline: all women, age ~ N(50.6, 8.8) within 18-64 (FINAL inclusion),
   pain on 0-10 with entry pain >= 4 (mean 6.3), memory mean 5.7.
2. Two latent factors: inflammation ``L`` and autoimmunity ``A`` (standard
   normal, correlation 0.25). Each inflammation marker is log-normal with its
   own median and spread and loads weakly on ``L`` (loadings 0.25-0.6, so any
   one marker is a poor proxy: biomarker signals are weak and overlapping);
   CRP also tracks BMI. Autoantibodies load on ``A``; anti-SGC also tracks pain
   severity through ``A``. Some values are below the limit of detection and
   exported as ``<LOD`` text, ANA as titre text, and some labs are missing.
3. Response: each patient has a latent "responder state" with probability
   ``pi_placebo`` (placebo-type response; prognostic: depends on baseline pain,
   symptom duration and depression) or ``pi_naltrexone = pi_placebo + uplift``.
   A responder improves by a Beta-distributed fraction of baseline (mean 42%
   for pain); a non-responder's change is N(-0.25, 1.2) points. This mixture
   reproduces the published arm means, the SD of change (about 1.6) and the
   >= 30% responder rates (about 45% vs 28%) together.
4. Heterogeneity (the smooth, documented mechanism): a profile score
   ``h = 0.75 L + 0.55 A`` gives a subgroup weight ``w = sigmoid((h - c) / s)``;
   ``uplift = u0 + u1 * w / E[w]``. In ``final`` the pain uplift is entirely in
   the subgroup (about 30% of patients) and the memory uplift partly so; the
   mean uplift keeps the published arm means. In ``null`` the uplift is the
   same mean for everyone. In ``strong`` the subgroup is larger and sharper,
   its uplift larger, response outside it slightly lower, and the markers track
   the latent factors more closely (arm means then differ from the paper: it is
   for power checks).
   Benefit therefore rises with inflammation (CRP, ESR, IL-6, ...) and
   autoantibody burden (anti-SGC, ANA, anti-TPO).
5. Ground truth: ``true_benefit_<outcome>`` is the true difference in the
   probability of meeting the default responder rule (>= 30% reduction),
   naltrexone minus placebo, for that patient; ``true_p_<outcome>_<arm>``
   the two probabilities; ``true_responder_subgroup`` is ``w > 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special, stats

SCENARIO_NAMES = ("final", "null", "strong")


@dataclass(frozen=True)
class Marker:
    """A log-normal marker: median (canonical unit), log-SD, loading on its latent factor."""

    median: float
    log_sd: float
    loading: float
    missing: float
    decimals: int


@dataclass(frozen=True)
class OutcomeModel:
    """Mixture model of a 12-week change on a 0-10 scale (see module docstring)."""

    baseline_mean: float
    baseline_sd: float
    baseline_min: float
    pi_placebo: float  # mean placebo-type response probability
    uplift_mean: float  # mean naltrexone uplift of the response probability
    responder_fraction_mean: float  # mean relative improvement of a responder
    responder_fraction_sd: float
    nonresponder_mean: float  # change of a non-responder, points (negative = better)
    nonresponder_sd: float


@dataclass(frozen=True)
class Calibration:
    """All simulator parameters in one place, with sources.

    Published (Bruun 2024; DESIGN section 1): age 50.6 (SD 8.8); pain baseline
    6.3, memory 5.7; 12-week change pain -1.3 vs -0.9, memory -1.4 vs -0.5;
    SD of pain change about 1.6; >= 30% pain responders 45% vs 28%; 49 vs 50
    randomised; 4 vs 3 stopped for adverse events; no loss to follow-up.
    Literature: ANA positive about 9%, anti-TPO about 19% in fibromyalgia;
    CRP tracks BMI; cytokine differences small (SMD 0.15-0.6).
    Stated assumptions: everything else (marker medians and spreads below,
    latent correlation 0.25, loadings, missingness rates, subgroup size 30%,
    prognostic effects, the non-responder change distribution, memory's SD
    of change of about 1.6 implied by P = 0.004 with 49/50 patients).
    """

    age_mean: float = 52.1
    age_sd: float = 8.8
    age_range: tuple[float, float] = (18.0, 64.0)
    bmi_median: float = 27.0
    bmi_log_sd: float = 0.18
    symptom_years_shape: float = 2.0
    symptom_years_scale: float = 5.0
    latent_correlation: float = 0.25
    pain_autoimmunity_loading: float = 0.3
    # Truncated-normal location that gives a mean of 6.3 above the entry cut-off 4.
    pain: OutcomeModel = OutcomeModel(
        baseline_mean=6.15,
        baseline_sd=1.35,
        baseline_min=4.0,
        pi_placebo=0.26,
        uplift_mean=0.167,
        responder_fraction_mean=0.42,
        responder_fraction_sd=0.12,
        nonresponder_mean=-0.25,
        nonresponder_sd=1.2,
    )
    memory: OutcomeModel = OutcomeModel(
        baseline_mean=5.75,
        baseline_sd=2.2,
        baseline_min=0.0,
        pi_placebo=0.215,
        uplift_mean=0.33,
        responder_fraction_mean=0.45,
        responder_fraction_sd=0.12,
        nonresponder_mean=0.12,
        nonresponder_sd=1.0,
    )
    memory_pain_correlation: float = 0.3
    other_symptoms: dict[str, float] = field(
        default_factory=lambda: {
            "fatigue": 7.2,
            "sleep": 6.8,
            "stiffness": 6.5,
            "tenderness": 6.4,
            "anxiety": 4.6,
            "depression": 4.1,
        }
    )
    # Prognostic effects on the log-odds of a placebo-type response, per SD.
    prognostic: dict[str, float] = field(
        default_factory=lambda: {"pain_baseline": 0.25, "symptom_years": -0.25, "depression_baseline": -0.25}
    )
    inflammation: dict[str, Marker] = field(
        default_factory=lambda: {
            "crp": Marker(1.8, 0.95, 0.55, 0.03, 1),
            "esr": Marker(12.0, 0.55, 0.50, 0.05, 0),
            "il6": Marker(2.2, 0.70, 0.60, 0.08, 1),
            "il8": Marker(9.0, 0.60, 0.35, 0.08, 1),
            "tnfa": Marker(6.0, 0.50, 0.45, 0.08, 1),
            "il1b": Marker(0.7, 0.80, 0.40, 0.08, 1),
            "il10": Marker(2.5, 0.60, 0.25, 0.08, 1),
            "neutrophils": Marker(3.8, 0.30, 0.35, 0.03, 2),
            "lymphocytes": Marker(2.0, 0.30, -0.10, 0.03, 2),
        }
    )
    crp_bmi_slope: float = 1.5  # log CRP per log BMI unit ("CRP tracks BMI")
    anti_sgc: Marker = Marker(1.05, 0.30, 0.60, 0.10, 2)
    anti_tpo: Marker = Marker(9.0, 1.45, 0.45, 0.05, 0)
    rf: Marker = Marker(5.0, 0.70, 0.30, 0.05, 1)
    # ANA titre categories and probabilities (>= 1:160: 9%).
    ana_titres: tuple[int, ...] = (0, 40, 80, 160, 320, 640, 1280)
    ana_probabilities: tuple[float, ...] = (0.55, 0.20, 0.16, 0.05, 0.025, 0.01, 0.005)
    ana_loading: float = 0.6
    ana_missing: float = 0.04
    cytokines_missing_together: bool = True
    adverse_event_rate: tuple[float, float] = (4 / 49, 3 / 50)  # naltrexone, placebo
    profile_weights: tuple[float, float] = (0.75, 0.55)  # on L and A


@dataclass(frozen=True)
class Scenario:
    name: str
    heterogeneous: bool
    subgroup_quantile: float = 0.70  # c is this quantile of the profile score: about 30% in the subgroup
    softness: float = 0.35  # s, in profile-score SD units
    pain_uplift: tuple[float, float] = (0.0, 0.167)  # (u0, u1): constant part and subgroup part
    memory_uplift: tuple[float, float] = (0.15, 0.18)
    marker_fidelity: float = 1.0  # multiplies every marker's loading on its latent factor (capped at 0.95)
    description: str = ""


SCENARIOS: dict[str, Scenario] = {
    "final": Scenario(
        "final",
        heterogeneous=True,
        description="a minority (~30%) with raised inflammation/autoantibody profile carries the benefit; "
        "arm means match FINAL",
    ),
    "null": Scenario("null", heterogeneous=False, description="the same average effects as FINAL, nobody differs"),
    "strong": Scenario(
        "strong",
        heterogeneous=True,
        subgroup_quantile=0.60,
        softness=0.10,
        pain_uplift=(-0.08, 0.36),
        memory_uplift=(-0.08, 0.36),
        marker_fidelity=1.6,
        description="a larger (~40%), sharper subgroup with a large benefit, slightly less response outside it, "
        "and markers that track the latent profile more closely: for power checks (arm means differ from FINAL)",
    ),
}

CALIBRATION = Calibration()


def simulate(scenario: str = "final", n: int = 99, seed: int = 0, calibration: Calibration = CALIBRATION) -> pd.DataFrame:
    """Draw one simulated trial in the ``fibromyalgia-ldn`` data contract.

    Same ``scenario``, ``n`` and ``seed`` give the same frame.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if n < 2:
        raise ValueError("n must be at least 2")
    sc = SCENARIOS[scenario]
    cal = calibration
    rng = np.random.default_rng(np.random.SeedSequence([seed, SCENARIO_NAMES.index(scenario), n]))

    n_treated = n // 2  # FINAL: 49 naltrexone, 50 placebo
    treated = rng.permutation(np.r_[np.ones(n_treated, bool), np.zeros(n - n_treated, bool)])

    age = _truncated_normal(rng, cal.age_mean, cal.age_sd, *cal.age_range, n)
    bmi = np.clip(cal.bmi_median * np.exp(rng.normal(0, cal.bmi_log_sd, n)), 16, 55)
    symptom_years = np.clip(rng.gamma(cal.symptom_years_shape, cal.symptom_years_scale, n), 0.5, 45)

    rho = cal.latent_correlation
    latent_l = rng.normal(size=n)
    latent_a = rho * latent_l + math.sqrt(1 - rho**2) * rng.normal(size=n)

    # Baseline symptoms: pain depends a little on autoimmunity (anti-SGC tracks pain severity).
    pain_z = cal.pain_autoimmunity_loading * latent_a + math.sqrt(1 - cal.pain_autoimmunity_loading**2) * rng.normal(size=n)
    pain_base = _round1(_truncate_by_redraw(rng, pain_z, cal.pain.baseline_mean, cal.pain.baseline_sd, cal.pain.baseline_min))
    mem_z = cal.memory_pain_correlation * pain_z + math.sqrt(1 - cal.memory_pain_correlation**2) * rng.normal(size=n)
    memory_base = _round1(np.clip(cal.memory.baseline_mean + cal.memory.baseline_sd * mem_z, 0, 10))
    frame: dict[str, object] = {
        "patient_id": [f"P{i + 1:04d}" for i in range(n)],
        "arm": np.where(treated, "naltrexone", "placebo"),
        "age": np.round(age).astype(int),
        "sex": np.full(n, "female"),
        "bmi": np.round(bmi, 1),
        "symptom_years": np.round(symptom_years, 1),
        "pain_baseline": pain_base,
        "memory_baseline": memory_base,
    }
    others = {}
    for name, mean in cal.other_symptoms.items():
        z = 0.4 * pain_z + math.sqrt(1 - 0.16) * rng.normal(size=n)
        others[name] = _round1(np.clip(mean + 1.8 * z, 0, 10))
        frame[f"{name}_baseline"] = others[name]
    symptom_mean = (pain_base + memory_base + sum(others.values())) / (2 + len(others))
    fiqr_base = np.clip(8.0 * symptom_mean + rng.normal(8.0, 7.0, n), 0, 100)
    frame["fiqr_baseline"] = _round1(fiqr_base)

    # Labs.
    labs, missing_cytokines = {}, rng.random(n) < cal.inflammation["il6"].missing
    log_bmi = np.log(bmi / cal.bmi_median)
    def loading(value: float) -> float:
        return float(np.clip(value * sc.marker_fidelity, -0.95, 0.95))

    for key, marker in cal.inflammation.items():
        lam = loading(marker.loading)
        z = lam * latent_l + math.sqrt(1 - lam**2) * rng.normal(size=n)
        log_value = math.log(marker.median) + marker.log_sd * z
        if key == "crp":
            log_value = log_value + cal.crp_bmi_slope * log_bmi
        if key == "esr":
            log_value = log_value + 0.01 * (age - 50)
        value = np.exp(log_value)
        if key in {"il6", "il8", "tnfa", "il1b", "il10"} and cal.cytokines_missing_together:
            missing = missing_cytokines
        else:
            missing = rng.random(n) < marker.missing
        labs[key] = (value, missing, marker.decimals)
    for key, marker in (("anti_sgc", cal.anti_sgc), ("anti_tpo", cal.anti_tpo), ("rf", cal.rf)):
        lam = loading(marker.loading)
        z = lam * latent_a + math.sqrt(1 - lam**2) * rng.normal(size=n)
        value = np.exp(math.log(marker.median) + marker.log_sd * z)
        labs[key] = (value, rng.random(n) < marker.missing, marker.decimals)

    from features.catalog import load_catalog

    catalog = load_catalog()
    for key, (value, missing, decimals) in labs.items():
        frame[key] = _export(value, missing, decimals, catalog[key].lod, key, catalog[key].plausible[1])
    lam = loading(cal.ana_loading)
    ana_z = lam * latent_a + math.sqrt(1 - lam**2) * rng.normal(size=n)
    cuts = stats.norm.ppf(np.cumsum(cal.ana_probabilities)[:-1])
    titre = np.asarray(cal.ana_titres)[np.searchsorted(cuts, ana_z)]
    ana_text = np.where(titre == 0, np.where(rng.random(n) < 0.15, "NEG", "negative"), np.char.add("1:", titre.astype(str)))
    frame["ana"] = np.where(rng.random(n) < cal.ana_missing, None, ana_text).astype(object)

    # Heterogeneity: the profile score and the subgroup weight.
    wl, wa = cal.profile_weights
    profile = wl * latent_l + wa * latent_a
    profile_sd = math.sqrt(wl**2 + wa**2 + 2 * wl * wa * rho)
    centre = stats.norm.ppf(sc.subgroup_quantile) * profile_sd
    weight = special.expit((profile - centre) / (sc.softness * profile_sd))
    mean_weight = _mean_weight(centre, sc.softness * profile_sd, profile_sd)

    prognostic_lp = (
        cal.prognostic["pain_baseline"] * (pain_base - 6.3) / 1.3
        + cal.prognostic["symptom_years"] * (symptom_years - 10.0) / 7.0
        + cal.prognostic["depression_baseline"] * (others["depression"] - cal.other_symptoms["depression"]) / 1.8
    )
    truth: dict[str, np.ndarray] = {
        "true_latent_inflammation": latent_l,
        "true_latent_autoimmunity": latent_a,
        "true_profile_score": profile,
        "true_subgroup_weight": weight,
        "true_responder_subgroup": (weight > 0.5).astype(int),
    }
    for outcome, model, uplift_parts, baseline in (
        ("pain", cal.pain, sc.pain_uplift, pain_base),
        ("memory", cal.memory, sc.memory_uplift, memory_base),
    ):
        pi_placebo = special.expit(special.logit(model.pi_placebo) + prognostic_lp)
        u0, u1 = uplift_parts
        uplift = u0 + u1 * weight / mean_weight if sc.heterogeneous else np.full(n, model.uplift_mean)
        pi_naltrexone = np.clip(pi_placebo + uplift, 0.0, 0.97)
        pi_arm = np.where(treated, pi_naltrexone, pi_placebo)
        state = rng.random(n) < pi_arm
        a, b = _beta_parameters(model.responder_fraction_mean, model.responder_fraction_sd)
        fraction = rng.beta(a, b, n)
        change = np.where(state, -baseline * fraction, rng.normal(model.nonresponder_mean, model.nonresponder_sd, n))
        frame[f"{outcome}_week12"] = _round1(np.clip(baseline + change, 0, 10))
        # True probability of meeting the default rule (>= 30% reduction) under each arm.
        q_responder = stats.beta.sf(0.3, a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            q_other = np.where(
                baseline > 0,
                stats.norm.cdf((-0.3 * baseline - model.nonresponder_mean) / model.nonresponder_sd),
                0.0,
            )
        q_responder = np.where(baseline > 0, q_responder, 0.0)
        p1 = pi_naltrexone * q_responder + (1 - pi_naltrexone) * q_other
        p0 = pi_placebo * q_responder + (1 - pi_placebo) * q_other
        truth[f"true_p_{outcome}_naltrexone"] = p1
        truth[f"true_p_{outcome}_placebo"] = p0
        truth[f"true_benefit_{outcome}"] = p1 - p0

    for name in cal.other_symptoms:
        change = rng.normal(-0.5, 1.3, n) - 0.3 * (frame["pain_week12"] - pain_base)  # type: ignore[operator]
        frame[f"{name}_week12"] = _round1(np.clip(others[name] + change, 0, 10))
    pain_change = frame["pain_week12"] - pain_base  # type: ignore[operator]
    frame["fiqr_week12"] = _round1(np.clip(fiqr_base + 5.0 * pain_change + rng.normal(-2.0, 6.0, n), 0, 100))
    ae_rate = np.where(treated, cal.adverse_event_rate[0], cal.adverse_event_rate[1])
    frame["stopped_for_adverse_event"] = (rng.random(n) < ae_rate).astype(int)

    out = pd.DataFrame(frame)
    for key, value in truth.items():
        out[key] = value
    return out


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float, n: int) -> np.ndarray:
    a, b = (low - mean) / sd, (high - mean) / sd
    return stats.truncnorm.rvs(a, b, loc=mean, scale=sd, size=n, random_state=rng)


def _truncate_by_redraw(rng: np.random.Generator, z: np.ndarray, mean: float, sd: float, low: float) -> np.ndarray:
    """Scale ``z`` to ``mean + sd * z`` within [low, 10], redrawing the independent part below ``low``."""
    value = mean + sd * z
    for _ in range(100):
        bad = value < low
        if not bad.any():
            break
        value[bad] = mean + sd * rng.normal(size=int(bad.sum()))
    return np.clip(np.maximum(value, low), 0, 10)


def _round1(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, dtype=float), 1)


def _beta_parameters(mean: float, sd: float) -> tuple[float, float]:
    common = mean * (1 - mean) / sd**2 - 1
    return mean * common, (1 - mean) * common


def _mean_weight(centre: float, scale: float, profile_sd: float) -> float:
    """E[sigmoid((h - c)/s)] for h ~ N(0, profile_sd^2), by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    values = special.expit((profile_sd * nodes - centre) / scale)
    return float(np.sum(weights * values) / np.sqrt(2 * np.pi))


def _export(
    value: np.ndarray, missing: np.ndarray, decimals: int, lod: float | None, key: str, upper: float = math.inf
) -> np.ndarray:
    """Format values as a lab system exports them: text, ``<LOD`` below detection, ``>600`` above range.

    A draw whose reported (rounded) value would exceed the catalog's plausible
    upper limit ``upper`` is exported as ``>upper``, as a lab reports a result
    above its measuring range: the log-normal tails reach such values once in
    tens of thousands of patients (ESR 179 mm/h at n = 20,000), and the data
    contract refuses them as implausible. So the simulator's output always
    satisfies the contract; the ground truth does not depend on lab values.
    """
    out = np.empty(len(value), dtype=object)
    for i, v in enumerate(value):
        if missing[i]:
            out[i] = None
        elif lod is not None and v < lod:
            out[i] = f"<{lod:g}"
        elif key == "anti_tpo" and v > 600:
            out[i] = ">600"
        elif round(v, decimals) > upper:
            out[i] = f">{upper:g}"
        else:
            out[i] = f"{v:.{decimals}f}"
    return out
