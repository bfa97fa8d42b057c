"""Moved to :mod:`core.runtime.forests` (the scoring runtime evaluates these arrays); kept for old imports."""

from core.runtime.forests import TreeArrays, flatten_lightgbm, flatten_stochtree

__all__ = ["TreeArrays", "flatten_lightgbm", "flatten_stochtree"]
