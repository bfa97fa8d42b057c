"""``responders``: the training verbs (:mod:`training.cli`) and the serving verbs (:mod:`serving.cli`) in one command.

The top layer: it alone imports both training and serving (the import contract in
pyproject.toml keeps serving free of training). Each layer's verbs stay runnable
on their own (``python -m training.cli``, ``python -m serving.cli``).
"""

from __future__ import annotations

from core.cli import new_app, run
from serving import cli as serving_cli
from training import cli as training_cli

app, report_app = new_app()
for part in (training_cli, serving_cli):
    app.registered_commands.extend(part.app.registered_commands)
    report_app.registered_commands.extend(part.report_app.registered_commands)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
