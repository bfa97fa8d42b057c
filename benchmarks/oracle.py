"""The observable oracle: the best benefit ranking the measured features allow.

The true benefit of a simulated patient depends on latent factors that the
labs measure only noisily, so no model of the observed features can reach the
"oracle (true benefit)" row. The observable oracle is a flexible LightGBM
regression of ``true_benefit_<outcome>`` on the product's engineered features,
fitted on a very large simulated population (200,000 patients by default), one
model per scenario and outcome: it approximates ``E[benefit | observed
features]``, the observable conditional benefit: what a trial can identify per
patient, and so the target every interval in the recovery benchmark is scored
against. AUC ratios against it say how close a method is to what the data
allow; the residual SD of the true benefit around it is the per-patient benefit
no model of these features can explain (no trial identifies it, and no served
interval is for it).

Fitted once per run and cached under ``benchmarks/out/oracle/``, keyed by the
code that defines the simulated patients and the features, the package
versions that fit it, and these settings: a change to any of them refits.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import REPO

OUTCOMES = ("pain", "memory")
# Everything that decides what a simulated patient and its engineered features are.
SOURCES = ("training/simulate.py", "core/data.py", "core/spec.py", "core/specs", "features")


@dataclass(frozen=True)
class OracleSettings:
    """How the observable oracle is fitted (the cache key includes every field)."""

    patients: int = 200_000
    seed: int = 424_242  # its own seed: the oracle never sees a benchmark trial or the held-out population
    n_estimators: int = 3000  # at most; early stopping on a 10% validation split picks the number
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 200
    early_stopping: int = 100
    threads: int = 2


@dataclass
class Oracle:
    """One scenario's fitted oracle: the feature pipeline and one LightGBM booster per outcome."""

    scenario: str
    pipeline: object
    boosters: dict[str, object]
    validation_rmse: dict[str, float]  # residual SD of the true benefit on the 10% validation split
    trees: dict[str, int]
    seconds: float

    def predict(self, raw: pd.DataFrame) -> dict[str, np.ndarray]:
        """``E[benefit | observed features]`` per outcome for model inputs ``raw``."""
        F = self.pipeline.transform(raw)
        return {o: np.asarray(b.predict(F.to_numpy(dtype=float))) for o, b in self.boosters.items()}


def cache_key(settings: OracleSettings) -> str:
    """Digest of the simulator and feature code, the fitting packages and the settings."""
    digest = hashlib.sha256()
    for source in SOURCES:
        path = REPO / source
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(REPO)).encode())
            digest.update(file.read_bytes())
    for package in ("numpy", "pandas", "scikit-learn", "lightgbm"):
        digest.update(f"{package}=={version(package)}".encode())
    digest.update(repr(sorted(asdict(settings).items())).encode())
    return digest.hexdigest()[:16]


def fit_oracle(scenario: str, settings: OracleSettings) -> Oracle:
    """Simulate ``settings.patients`` patients of ``scenario`` and fit the pipeline and one booster per outcome."""
    import lightgbm as lgb

    from core.data import model_inputs
    from core.spec import load_spec
    from features.pipeline import build_feature_pipeline
    from training.simulate import simulate

    started = time.perf_counter()
    spec = load_spec()
    frame = simulate(scenario, settings.patients, settings.seed)
    raw = model_inputs(frame, spec)
    pipeline = build_feature_pipeline(spec).fit(raw)
    F = pipeline.transform(raw).to_numpy(dtype=float)
    validation = np.arange(len(F)) % 10 == 0
    boosters, rmse, trees = {}, {}, {}
    for outcome in OUTCOMES:
        y = frame[f"true_benefit_{outcome}"].to_numpy(dtype=float)
        model = lgb.LGBMRegressor(
            n_estimators=settings.n_estimators,
            learning_rate=settings.learning_rate,
            num_leaves=settings.num_leaves,
            min_child_samples=settings.min_child_samples,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            n_jobs=settings.threads,
            random_state=settings.seed,
            deterministic=True,
            force_col_wise=True,
            verbose=-1,
        )
        model.fit(
            F[~validation],
            y[~validation],
            eval_X=F[validation],
            eval_y=y[validation],
            callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)],
        )
        boosters[outcome] = model.booster_
        residual = y[validation] - model.booster_.predict(F[validation])
        rmse[outcome] = float(np.sqrt(np.mean(residual**2)))
        trees[outcome] = int(model.booster_.current_iteration())
    return Oracle(scenario, pipeline, boosters, rmse, trees, time.perf_counter() - started)


def load_oracles(scenarios: tuple[str, ...], settings: OracleSettings, cache_dir: Path | None) -> tuple[dict[str, Oracle], bool]:
    """The oracle of every scenario, from the cache when its key matches (fitted and cached otherwise).

    Returns the oracles and whether all of them came from the cache.
    """
    import joblib

    key = cache_key(settings)
    oracles, cached = {}, True
    for scenario in scenarios:
        path = cache_dir / f"oracle-{scenario}-{key}.joblib" if cache_dir is not None else None
        if path is not None and path.exists():
            oracles[scenario] = joblib.load(path)
            continue
        cached = False
        print(f"[recovery] fitting the observable oracle for {scenario} on {settings.patients:,} patients ...", file=sys.stderr, flush=True)
        oracles[scenario] = fit_oracle(scenario, settings)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(oracles[scenario], path)
    return oracles, cached
