"""Training: fitting, testing and choosing the responder models, then tracking, registering and reporting them.

``from training import ResponderEstimator`` is the library API (:mod:`training.estimator`); it is
imported on first use so that ``import training.<module>`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ResponderEstimator"]


def __getattr__(name: str) -> Any:
    if name == "ResponderEstimator":
        from training.estimator import ResponderEstimator

        return ResponderEstimator
    raise AttributeError(f"module 'training' has no attribute {name!r}")
