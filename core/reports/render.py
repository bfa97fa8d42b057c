"""The Jinja2 environment shared by both reports: autoescaping on, number filters, packaged templates.

The shared layout (``base.html.j2``, ``_effects.html.j2``) lives here in core;
each report keeps its own template beside its renderer: the cohort report in
``training/reports/templates``, the one-patient report in ``serving/reports/templates``.
"""

from __future__ import annotations

import math
from functools import lru_cache

from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined

from core.spec import inline


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt_num(value, digits: int = 3) -> str:
    """Fixed decimals; ``n/a`` for missing values (the one format the tests compare with MLflow metrics)."""
    return "n/a" if _missing(value) else f"{float(value):.{digits}f}"


def fmt_signed(value, digits: int = 1) -> str:
    """Signed fixed decimals (changes and differences)."""
    return "n/a" if _missing(value) else f"{float(value):+.{digits}f}"


def fmt_pct(value, digits: int = 0) -> str:
    """A probability as a percentage."""
    return "n/a" if _missing(value) else f"{100 * float(value):.{digits}f}%"


def fmt_pp(value, digits: int = 0) -> str:
    """Probability difference as signed percentage points."""
    return "n/a" if _missing(value) else f"{100 * float(value):+.{digits}f} pp"


def fmt_p(value) -> str:
    """A p-value for prose: three decimals, or ``< 0.001``."""
    if _missing(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def fmt_p_eq(value) -> str:
    """A p-value as a clause: ``p = 0.079`` or ``p < 0.001``."""
    text = fmt_p(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def fmt_level(value) -> str:
    """A confidence level as a percentage without a needless decimal: 0.95 -> '95%', 0.975 -> '97.5%'."""
    if _missing(value):
        return "n/a"
    return f"{100 * float(value):.1f}".removesuffix(".0") + "%"


@lru_cache(maxsize=4)
def environment(package: str) -> Environment:
    """Templates from ``<package>/templates``, then the shared ones; every variable is HTML-escaped unless marked safe."""
    env = Environment(
        loader=ChoiceLoader([PackageLoader(package, "templates"), PackageLoader("core.reports", "templates")]),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, signed=fmt_signed, pct=fmt_pct, pp=fmt_pp, pvalue=fmt_p, peq=fmt_p_eq, level=fmt_level, inline=inline)
    return env
