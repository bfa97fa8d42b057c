"""BentoML's private APIs used by the service (:mod:`serving.compat.bentoml`); the others are in :mod:`core.compat`."""
