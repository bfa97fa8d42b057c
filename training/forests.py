"""Moved to :mod:`serving.runtime.forests` (the scoring runtime evaluates these arrays); kept for old imports."""

from serving.runtime.forests import TreeArrays, flatten_lightgbm, flatten_stochtree

__all__ = ["TreeArrays", "flatten_lightgbm", "flatten_stochtree"]
