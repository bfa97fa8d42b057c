"""Third-party private APIs, one module per library, each pinned in requirements/lock.txt and tested per version.

The project calls a few private functions where the public API costs more than
the work (thousands of small fits in a training job, one-patient requests).
They live here, and only here, so that a version bump has one place to check:
``tests/test_compat.py`` exercises every private API against the pinned version
and fails on a version it was not checked with. BentoML's are in
:mod:`serving.compat` (only serving uses BentoML).
"""
