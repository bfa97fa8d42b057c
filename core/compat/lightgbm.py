"""LightGBM's C library handle (``lightgbm.basic._LIB``), checked with LightGBM 4.7.

LightGBM predicts with every core by default; for one patient the threads only
wait for each other (one ``pred_contrib`` call took 16 ms with the default
against 0.03 ms with one thread on a loaded 2-core machine). The process-wide
setting is in the C API (``LGBM_SetMaxThreads``); the Python package has no
wrapper for it.
"""

from __future__ import annotations

import ctypes

CHECKED_WITH = "4.7"  # the LightGBM minor version these calls were checked with (tests/test_compat.py)


def set_max_threads(threads: int) -> bool:
    """Cap LightGBM's OpenMP threads in this process; False when the library has no such call."""
    from lightgbm.basic import _LIB

    setter = getattr(_LIB, "LGBM_SetMaxThreads", None)
    if setter is None:
        return False
    setter(ctypes.c_int(threads))
    return True


def max_threads() -> int:
    """The cap set by :func:`set_max_threads` (LightGBM's ``LGBM_GetMaxThreads``; -1 when none is set)."""
    from lightgbm.basic import _LIB

    out = ctypes.c_int(0)
    _LIB.LGBM_GetMaxThreads(ctypes.byref(out))
    return out.value
