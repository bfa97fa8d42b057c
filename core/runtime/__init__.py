"""The scoring runtime: the fitted artefact and the NumPy plan compiled from it.

Training builds a :class:`~core.runtime.artefact.ResponderModel` (the fitted
feature pipeline, the champion, its interval ensemble or posterior draws, the
label rule) and logs it; the service, ``responders predict`` and the reports
load it and run :class:`~core.runtime.plan.ScoringPlan`, compiled from those
same fitted objects at load time (``features.plan.FeaturePlan`` for the
features, :mod:`core.runtime.arms` for the champion and its ensemble,
:mod:`core.runtime.forests` for tree ensembles as arrays). Nothing here
imports BentoML or MLflow at module level: a training job imports it to build
the artefact.
"""
