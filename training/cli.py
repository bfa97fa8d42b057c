"""The ``responders`` command: one thin sub-command per verb, each calling a plain function.

Heavy libraries (MLflow, BentoML, LightGBM) are imported inside the commands
that need them, after usage reporting has been switched off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from training.errors import ConfigError
from training.published import DEFAULT_SEED

if TYPE_CHECKING:
    from training.spec import DatasetSpec


class _Commands(TyperGroup):
    """Turns a bad config or spec into one line per problem (exit 2) and Ctrl-C into a message (exit 130).

    Typer itself converts an interrupt into a silent exit 130 before any
    handler around ``app()`` could speak.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            for line in err.lines():
                typer.echo(line, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    name="responders",
    help="Responder-subgroup models for randomised trials (default spec: low-dose naltrexone in fibromyalgia).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
report_app = typer.Typer(help="Write SHAP explanation reports (self-contained HTML).", no_args_is_help=True)
app.add_typer(report_app, name="report")

SpecOption = Annotated[
    str | None, typer.Option("--spec", help="dataset spec YAML, or the name of a packaged spec (default: fibromyalgia-ldn)")
]


def quiet_telemetry() -> None:
    """Switch off usage reporting of MLflow and BentoML before they are imported."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@app.callback()
def _root() -> None:
    quiet_telemetry()


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="output file (.csv or .parquet)")],
    scenario: Annotated[str, typer.Option(help="final, null or strong")] = "final",
    n: Annotated[int, typer.Option("--n", min=2, help="number of randomised patients")] = 99,
    seed: Annotated[
        int, typer.Option(help="random seed; the default is the draw closest to the published FINAL figures (training/published.py)")
    ] = DEFAULT_SEED,
) -> None:
    """Simulate a FINAL-calibrated trial in the data contract (with true_* ground truth)."""
    from training.simulate import SCENARIOS
    from training.simulate import simulate as draw

    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"choose one of {', '.join(SCENARIOS)}", param_hint="--scenario")
    frame = draw(scenario, n, seed)
    write_table(frame, out)
    typer.echo(f"Simulated trial: scenario={scenario} n={n} seed={seed} -> {out} (simulated data, not patients)")


def write_table(frame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in {".parquet", ".pq"}:
        frame.astype({c: str for c in frame.columns if frame[c].dtype == object}).to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="trial file (.csv or .parquet)")],
    spec: SpecOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check a trial file against the data contract; exit 0 when usable, 1 otherwise."""
    from training.data import read_table
    from training.data import validate as check
    from training.spec import load_spec

    dataset_spec = load_spec(spec)
    report = check(read_table(data), dataset_spec, source=str(data))
    typer.echo(report.to_json() if json_out else report.render())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def train(
    data: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="trial file (.csv or .parquet)")],
    spec: SpecOption = None,
    config: Annotated[Path | None, typer.Option("--config", exists=True, dir_okay=False, help="training config YAML")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")] = None,
    executor: Annotated[str | None, typer.Option(help="local or dask (overrides the config)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="address of a running Dask scheduler (implies --executor dask)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="local processes or local Dask workers")] = None,
    seed: Annotated[int | None, typer.Option(help="override the config's seed")] = None,
    summary_json: Annotated[Path | None, typer.Option("--summary-json", help="also write the job summary as JSON")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="write the cohort report here as cohort.html (it is also logged to MLflow)")
    ] = Path("reports"),
) -> None:
    """Train, evaluate (nested CV), test heterogeneity, register and gate the champion per outcome."""
    import logging

    from training.config import load_config
    from training.data import DataContractError
    from training.spec import load_spec
    from training.tracking import ui_link
    from training.train import run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict = {}
    if executor or scheduler or workers:
        overrides["executor"] = {
            k: v for k, v in {"kind": "dask" if scheduler else executor, "scheduler": scheduler, "workers": workers}.items() if v
        }
    if seed is not None:
        overrides["seed"] = seed
    cfg = load_config(config, **overrides)
    dataset_spec = load_spec(spec)
    try:
        summary = run_training(data, dataset_spec, cfg, tracking_uri=tracking_uri, summary_json=summary_json, report_dir=report_dir)
    except DataContractError as err:
        typer.echo(err.report.render(), err=True)
        typer.echo("Training refused: the file breaks the data contract (see the report above).", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as err:
        typer.echo(interruption_message(err, dataset_spec, tracking_uri), err=True)
        raise typer.Exit(130) from None
    typer.echo(summary.render())
    typer.echo(f"MLflow UI: {ui_link(summary.tracking_uri, summary.experiment_id)}")
    if report_dir is not None:
        typer.echo(f"Cohort report: {report_dir / 'cohort.html'}")


def interruption_message(err: KeyboardInterrupt, spec: DatasetSpec, tracking_uri: str | None) -> str:
    """One line for a Ctrl-C during training: the step, the runs' fate and whether any champion moved.

    The ``champion`` alias moves only in the "validate and promote" step, all
    aliases together; the registry is asked rather than assumed, so the line
    stays true if the interrupt came after promotion.
    """
    from mlflow.exceptions import MlflowException

    from training.progress import JobInterrupted
    from training.tracking import champions_set_by, setup_tracking

    if not isinstance(err, JobInterrupted):
        return "Training interrupted before its MLflow run started: nothing was recorded and the champions are unchanged."
    where = f" at {err.phase}" if err.phase else ""
    runs = f"MLflow run {err.run_id} and its outcome runs are marked KILLED"
    try:
        _, client = setup_tracking(tracking_uri)
        moved = champions_set_by(client, [spec.registered_model_name(o) for o in spec.outcomes], err.run_id)
    except MlflowException as problem:
        return f"Training interrupted{where}; {runs}; could not check the champions ({problem})."
    if moved:
        now = ", ".join(f"{name}@champion -> version {version}" for name, version in moved.items())
        return f"Training interrupted{where}, after promotion: {now} (this job's models); {runs}."
    return f"Training interrupted{where}; {runs}; the champions are unchanged (no @champion alias was moved)."


@app.command()
def predict(
    patients: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="patients as .csv, .parquet or .json")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write here instead of printing: .json (the POST /predict JSON), or .parquet / .jsonl (one row per patient, fast)"),
    ] = None,
    spec: SpecOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the registry")] = None,
) -> None:
    """Score patients with the registered champions; prints the same JSON as POST /predict (progress on stderr).

    With --out FILE.parquet or FILE.jsonl: one row per patient (id, errors, warnings, each outcome's scores,
    label and answer), the same numbers, scored column by column (tens of thousands of patients a second).
    """
    import logging

    from serving.scoring import TABLE_SUFFIXES, score_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if out is not None and out.suffix.lower() in TABLE_SUFFIXES:
        score_file(patients, spec=spec, tracking_uri=tracking_uri, out=out)
        typer.echo(f"wrote {out}")
        return
    text = score_file(patients, spec=spec, tracking_uri=tracking_uri)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"wrote {out}")
    else:
        typer.echo(text)


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
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


def serve_command(port: int, host: str) -> list[str]:
    """The ``bentoml serve`` command line that ``responders serve`` becomes."""
    return [sys.executable, "-m", "bentoml", "serve", "serving.service:ResponderService", "--host", host, "--port", str(port)]


def serve_environment(env: dict[str, str], spec: str | None = None, insecure_dev: bool = False) -> dict[str, str]:
    """The server's environment: token policy checked, the dataset spec resolved (exits 2 when unusable)."""
    import yaml

    from training.spec import load_spec

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


@report_app.command("cohort")
def report_cohort(
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    run: Annotated[str | None, typer.Option("--run", help="training run id (default: the latest finished training run of the spec)")] = None,
    spec: SpecOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")] = None,
) -> None:
    """Re-render a training job's cohort report (with model card) from MLflow alone."""
    import logging

    from training.reports import CohortPayload, latest_training_run, render_cohort_report
    from training.spec import load_spec
    from training.tracking import setup_tracking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uri, client = setup_tracking(tracking_uri)
    try:
        run_id = run or latest_training_run(client, load_spec(spec).name)
        payload = CohortPayload.from_mlflow(run_id, uri)
    except LookupError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    html = render_cohort_report(payload)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    typer.echo(f"wrote {out} ({len(html) / 1e6:.1f} MB) from training run {run_id}")


@report_app.command("patient")
def report_patient(
    patient: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON object of baseline fields, or {\"patients\": [...]} (first used)")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    spec: SpecOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the registry")] = None,
) -> None:
    """One-patient report from the @champion model of every outcome of the spec."""
    from serving.scoring import Scorer, patient_from_file, resolve_champions
    from training.reports import render_patient_report
    from training.spec import load_spec

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
    quiet_telemetry()
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
