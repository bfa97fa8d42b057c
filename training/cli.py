"""The training verbs of ``responders``: simulate, validate, train and ``report cohort``.

Each sub-command is thin and calls a plain function; heavy libraries (MLflow,
LightGBM) are imported inside the commands that need them, after usage
reporting has been switched off. The serving verbs are in :mod:`serving.cli`;
the ``responders`` console script (:mod:`responders.cli`) carries both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.cli import SpecOption, new_app, run, skip_teardown
from training.published import DEFAULT_SEED

if TYPE_CHECKING:
    from core.spec import DatasetSpec

app, report_app = new_app()


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
    from core.data import read_table
    from core.data import validate as check
    from core.spec import load_spec

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

    from core.config import load_config
    from core.data import DataContractError
    from core.spec import load_spec

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
    if cfg.executor.kind == "local" and cfg.executor.scheduler is None:
        from training.executor import WORKER_MODULES, quiet_pool_race_on_interrupt, start_local_workers

        # The workers start and import the training modules while this process imports MLflow and the job's modules.
        start_local_workers(cfg.executor.workers, WORKER_MODULES)
        quiet_pool_race_on_interrupt()
    from training.tracking import ui_link
    from training.train import run_training

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
    skip_teardown()


def interruption_message(err: KeyboardInterrupt, spec: DatasetSpec, tracking_uri: str | None) -> str:
    """One line for a Ctrl-C during training: the step, the runs' fate and whether any champion moved.

    The ``champion`` alias moves only in the "validate and promote" step, all
    aliases together; the registry is asked rather than assumed, so the line
    stays true if the interrupt came after promotion.
    """
    from mlflow.exceptions import MlflowException

    from core.progress import JobInterrupted
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


@report_app.command("cohort")
def report_cohort(
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    run: Annotated[str | None, typer.Option("--run", help="training run id (default: the latest finished training run of the spec)")] = None,
    spec: SpecOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")] = None,
) -> None:
    """Re-render a training job's cohort report (with model card) from MLflow alone."""
    import logging

    from core.spec import load_spec
    from training.reports import CohortPayload, latest_training_run, render_cohort_report
    from training.tracking import setup_tracking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uri, client = setup_tracking(tracking_uri)
    dataset = load_spec(spec)
    # Three or more arms: one report per comparison, written beside --out as <stem>-<comparison><suffix>.
    keys = [c.key for c in dataset.comparisons()]
    try:
        run_id = run or latest_training_run(client, dataset.name)
        payloads = {key: CohortPayload.from_mlflow(run_id, uri, "reports" if key is None else f"reports/{key}") for key in keys}
    except LookupError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    for key, payload in payloads.items():
        html = render_cohort_report(payload)
        path = out if key is None else out.with_name(f"{out.stem}-{key}{out.suffix}")
        path.write_text(html, encoding="utf-8")
        typer.echo(f"wrote {path} ({len(html) / 1e6:.1f} MB) from training run {run_id}")


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
