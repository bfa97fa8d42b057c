"""The serving verbs of ``responders``: predict, serve, bento and ``report patient``.

Each sub-command is thin and calls a plain function; heavy libraries (MLflow,
BentoML) are imported inside the commands that need them, after usage
reporting has been switched off. Nothing here imports ``training``: the
training verbs are in :mod:`training.cli`; the ``responders`` console script
(:mod:`responders.cli`) carries both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from core.cli import SpecOption, end_process, new_app, run

app, report_app = new_app()


@app.command()
def predict(
    patients: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="patients as .csv, .parquet or .json")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write here instead of printing: .json (the POST /predict JSON), or .parquet / .jsonl (one row per patient, smaller)"),
    ] = None,
    spec: SpecOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the registry")] = None,
) -> None:
    """Score patients with the registered champions; prints the same JSON as POST /predict (progress on stderr).

    With --out FILE.parquet or FILE.jsonl: one row per patient (id, errors, warnings, each outcome's scores,
    label and answer), the same numbers. Every output is scored column by column.
    """
    import logging

    from serving.batch import score_file_to_table
    from serving.scoring import ChampionError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        score_file_to_table(patients, out, spec=spec, tracking_uri=tracking_uri)
    except ChampionError as err:  # no champion, or one stored in another artefact format: one line, exit 2
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    if out is not None:
        typer.echo(f"wrote {out}")
    end_process(0)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (or --host)")] = 3000,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    spec: SpecOption = None,
    insecure_dev: Annotated[
        bool, typer.Option("--insecure-dev", help="development only: serve without a bearer token if RESPONDERS_API_TOKEN is unset")
    ] = False,
) -> None:
    """Serve the champions as a REST API (BentoML); needs RESPONDERS_API_TOKEN unless --insecure-dev.

    The champions are loaded and checked before the port is bound; the command
    exits non-zero with one line when they cannot be served. This process
    becomes the BentoML server (no wrapper left behind), so SIGTERM or Ctrl-C
    stops it and frees the port.
    """
    command = serve_command(port=port, host=host)
    env = serve_environment(dict(os.environ), spec=spec, insecure_dev=insecure_dev)
    problem = port_problem(host, port)
    if problem:
        typer.echo(f"Refusing to start: {problem}", err=True)
        raise typer.Exit(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not bind ``host:port`` (one line), or None when it can.

    Checked before the server starts, so a busy port is one line, not BentoML's
    traceback (``OSError: [Errno 98] Address already in use``).
    """
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a socket in TIME_WAIT does not count
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use (another server?); stop it or choose another port (--port, or PORT=... for make serve)"
            if err.errno == errno.EACCES:
                return f"port {port} on {host} needs privileges this user does not have; choose a port above 1023 (--port)"
            return f"cannot bind {host}:{port}: {err.strerror or err}"
    return None


def serve_command(port: int, host: str) -> list[str]:
    """The ``bentoml serve`` command line that ``responders serve`` becomes."""
    return [sys.executable, "-m", "bentoml", "serve", "serving.service:ResponderService", "--host", host, "--port", str(port)]


def serve_environment(env: dict[str, str], spec: str | None = None, insecure_dev: bool = False) -> dict[str, str]:
    """The server's environment: token policy checked, the dataset spec resolved (exits 2 when unusable)."""
    import yaml

    from core.spec import load_spec

    if insecure_dev:
        env["RESPONDERS_INSECURE_DEV"] = "1"
        if not env.get("RESPONDERS_API_TOKEN"):
            typer.echo("WARNING: --insecure-dev without RESPONDERS_API_TOKEN: the API accepts requests without a token.", err=True)
    elif not env.get("RESPONDERS_API_TOKEN"):
        typer.echo("Refusing to start: set RESPONDERS_API_TOKEN (or pass --insecure-dev for local development).", err=True)
        raise typer.Exit(2)
    if spec is not None:
        try:
            load_spec(spec)
        except (OSError, ValueError, yaml.YAMLError) as err:
            typer.echo(f"Refusing to start: spec {spec!r}: {' '.join(str(err).split())}", err=True)
            raise typer.Exit(2) from None
        # A file is found again by the server whatever its working directory; a packaged name stays a name.
        env["RESPONDERS_SPEC"] = str(Path(spec).resolve()) if Path(spec).is_file() else spec
    return env


@report_app.command("patient")
def report_patient(
    patient: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON object of baseline fields, or {\"patients\": [...]} (first used)")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    spec: SpecOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the registry")] = None,
) -> None:
    """One-patient report from the @champion model of every outcome of the spec."""
    from core.spec import load_spec
    from serving.reports import render_patient_report
    from serving.scoring import Scorer, patient_from_file, resolve_champions

    dataset_spec = load_spec(spec)
    try:
        champions = resolve_champions(dataset_spec, tracking_uri)
    except RuntimeError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    try:
        frame, problems = patient_from_file(patient, Scorer(dataset_spec, champions))
    except ValueError as err:  # not JSON, or an unreadable table
        typer.echo(f"Cannot read {patient}: {err}", err=True)
        raise typer.Exit(2) from None
    if frame is None:
        typer.echo("The patient cannot be scored:\n  " + "\n  ".join(f"{p.field}: {p.message}" for p in problems), err=True)
        raise typer.Exit(2)
    models = {outcome: c.model for outcome, c in champions.items()}
    versions = {outcome: f"{c.ref.registered_model} v{c.ref.version}" for outcome, c in champions.items()}
    html = render_patient_report(models, frame, versions)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    typer.echo(f"wrote {out} ({len(html) / 1e3:.0f} kB): {', '.join(versions.values())}")


@app.command()
def bento(
    spec: SpecOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the registry")] = None,
) -> None:
    """Build a deployable Bento (offline) that carries the current champions."""
    from serving.bento import build_bento

    built = build_bento(spec, tracking_uri)
    typer.echo(f"built {built.tag} with models {', '.join(str(m.tag) for m in built.info.models)}")


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
