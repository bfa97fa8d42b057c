"""Every third-party private API the project relies on, against the version pinned in requirements/lock.txt.

A version bump fails the pin test of its library first: re-check that library's
compat module (core/compat/, serving/compat/) with the new version, then move
its CHECKED_WITH and the pin together.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"


def pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", LOCK.read_text(), re.M)
    assert match, f"{package} is not pinned in {LOCK}"
    return match.group(1)


@pytest.mark.parametrize(
    ("package", "module"),
    [("scikit-learn", "core.compat.sklearn"), ("lightgbm", "core.compat.lightgbm"), ("bentoml", "serving.compat.bentoml")],
)
def test_the_installed_version_is_the_pin_the_compat_module_was_checked_with(package, module):
    import importlib

    checked = importlib.import_module(module).CHECKED_WITH
    assert metadata.version(package) == pinned(package), f"{package}: installed {metadata.version(package)}, pinned {pinned(package)}"
    assert pinned(package).startswith(checked + "."), f"{package} {pinned(package)} is pinned; {module} was checked with {checked}"


def test_sklearn_private_liblinear_fits_what_logistic_regression_fits():
    from sklearn.linear_model import LogisticRegression

    from core.compat.sklearn import liblinear_logistic

    rng = np.random.default_rng(4)
    Z = rng.normal(size=(90, 6))
    y = (rng.random(90) < 1 / (1 + np.exp(-(Z[:, 0] - 0.5 * Z[:, 3])))).astype(int)
    for C in (0.05, 1.0):
        coef, intercept = liblinear_logistic(Z, y.astype(float), C, max_iter=2000)
        reference = LogisticRegression(C=C, solver="liblinear", max_iter=2000).fit(Z, y)
        np.testing.assert_allclose(coef, reference.coef_[0], atol=1e-10)
        assert intercept == pytest.approx(float(reference.intercept_[0]), abs=1e-10)


def test_lightgbm_private_library_handle_caps_the_threads():
    from core.compat.lightgbm import max_threads, set_max_threads

    try:
        assert set_max_threads(1) is True
        assert max_threads() == 1
        assert set_max_threads(2) and max_threads() == 2
    finally:
        set_max_threads(-1)  # back to LightGBM's default (every core) for the rest of the session


def test_bentoml_private_service_class_and_openapi_specification():
    import attr
    import bentoml

    from serving.compat.bentoml import OpenAPISpecification, Service

    class Marked(Service):
        pass

    @bentoml.service(name="compat-check", service_class=Marked)
    class Probe:
        @bentoml.api
        def echo(self, text: str) -> str:
            return text

    assert isinstance(Probe, Marked)  # @bentoml.service builds the subclass the service hardens
    spec = Probe.openapi_spec
    assert isinstance(spec, OpenAPISpecification)
    fields = {a.name for a in attr.fields(OpenAPISpecification)}
    assert {"openapi", "info", "paths", "components"} <= fields
    assert "/echo" in spec.asdict()["paths"]


def test_bentoml_private_metrics_client_renders_prometheus_text():
    from serving.compat.bentoml import SERVER_LOGGERS, render_metrics

    text = render_metrics()
    assert isinstance(text, bytes | str)
    assert "bentoml._internal.server.http_app" in SERVER_LOGGERS
