"""The core both training and serving stand on; it imports neither (checked by import-linter, see pyproject.toml).

- the dataset spec and data contract: :mod:`core.spec`, :mod:`core.data`, :mod:`core.errors`
- the label policy and the responder labels: :mod:`core.labelling`, :mod:`core.labels`, :mod:`core.effects`
- the training configuration schema and its defaults: :mod:`core.config` (``core/configs/default.yaml``)
- the fitted candidates (:mod:`core.candidates`) and the artefact with its scoring runtime
  (:mod:`core.runtime`): a served pickle references only ``core`` and ``features`` classes,
  so a server (or a Bento) loads a model without the training package
- registry readers: :mod:`core.registry` (where the store is, which version is ``@champion``, load it)
- shared report parts: :mod:`core.reports`; progress and interrupt helpers: :mod:`core.progress`

Layers, top to bottom: ``responders`` (the command) > ``training`` | ``serving`` > ``core`` > ``features``.
"""
