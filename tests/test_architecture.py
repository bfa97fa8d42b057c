"""The import contract: responders > training | serving > core > features (pyproject.toml, [tool.importlinter])."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"


def lint_imports(cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    command = [LINT_IMPORTS, "--no-cache"] + (["--config", str(config)] if config else [])
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={"PYTHONPATH": str(cwd), "PATH": ""}, timeout=300)


def ini_section(name: str, values: dict) -> str:
    """One section of import-linter's INI format (lists one item per indented line)."""
    lines = [f"[{name}]"]
    for key, value in values.items():
        if isinstance(value, list) and value and isinstance(value[0], str):
            lines.append(f"{key} =" + "".join(f"\n    {item}" for item in value))
        elif not isinstance(value, list):
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n\n"


def test_the_code_keeps_the_import_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contract_fails_on_an_upward_import_and_a_cycle(tmp_path):
    """The same contract, on a tree where serving imports training and core imports serving, fails naming both."""
    for package in ("responders", "training", "serving", "core", "features"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "serving" / "scoring.py").write_text("from training import model\n")
    (tmp_path / "training" / "model.py").write_text("import core.spec\n")
    (tmp_path / "core" / "spec.py").write_text("import features.labs\n")
    (tmp_path / "core" / "plan.py").write_text("import serving.scoring\nfrom core import artefact\n")
    (tmp_path / "core" / "artefact.py").write_text("from core import plan\n")
    (tmp_path / "features" / "labs.py").write_text("")
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    config = tmp_path / ".importlinter"
    config.write_text(ini_section("importlinter", settings) + "".join(
        ini_section(f"importlinter:contract:{i}", contract) for i, contract in enumerate(settings["contracts"])
    ))

    result = lint_imports(tmp_path, config)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "serving.scoring -> training" in result.stdout
    assert "core.plan -> serving.scoring" in result.stdout
    assert "No cycles are allowed in core" in result.stdout


def test_serving_runs_without_importing_training():
    """At run time too (lazy imports included): the service, its CLI and batch scoring load no training module."""
    code = (
        "import sys, serving.service, serving.cli, serving.scoring, serving.bento, serving.reports\n"
        "loaded = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_one_responders_command_carries_every_verb_of_both_layers():
    """The console script keeps every sub-command (each layer's CLI holds its own verbs)."""
    import typer.main

    from responders.cli import app

    group = typer.main.get_command(app)
    assert set(group.commands) == {"simulate", "validate", "train", "predict", "serve", "bento", "report"}
    assert set(group.commands["report"].commands) == {"cohort", "patient"}
    train_flags = {p.opts[0] for p in group.commands["train"].params if p.opts}
    assert {"--spec", "--config", "--tracking-uri", "--summary-json", "--report-dir", "--executor", "--workers", "--seed"} <= train_flags
    serve_flags = {p.opts[0] for p in group.commands["serve"].params if p.opts}
    assert {"--port", "--host", "--spec", "--insecure-dev"} <= serve_flags
