"""``melt traces train|predict|evaluate|export``: the trace-anomaly seed tools' commands (see melt.pipeline.trace_models)."""

from __future__ import annotations

from typing import Any

import click

from melt.cli.common import settings_of

AGGREGATION = click.Choice(["max", "mean", "percentile_95"])


@click.group()
def traces() -> None:
    """Train, apply, evaluate and export a trace-graph model (gat_gae, logtraceguard, ...) on span files or bundles."""


@traces.command("train")
@click.option("--data", required=True, type=click.Path(),
              help="Normal spans: a parquet/CSV span file, or a bundle directory (its log lines too).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--epochs", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--latent-dim", type=int, default=None, help="Node latent size (gat_gae).")
@click.option("--batch-size", type=int, default=None, help="Traces per training step (gat_gae).")
@click.option("--aggregation", type=AGGREGATION, default=None, help="Span errors to a trace score (gat_gae).")
@click.option("--detector", "model", default="gat_gae", show_default=True,
              help="Trace detector plugin that scores whole traces: gat_gae or logtraceguard (or a plugin with trace_scores).")
@click.option("--labels", default=None,
              help="Traces known to be faulty (logtraceguard's PU head): a file of trace ids, one per line, "
                   "or 'truth' for the bundle's truth.json fault windows.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def train_command(ctx: click.Context, data: str, output: str, model: str, labels: str | None, quiet: bool,
                  **overrides: Any) -> None:
    """Fit the model on normal traces (and labelled faulty ones, where the detector takes them)."""
    from melt.core.registry import get_plugin
    from melt.pipeline.trace_models import train

    params = dict(settings_of(ctx).detector_params(model))
    accepted = get_plugin(model).cls.param_defaults()
    unknown = [k for k, v in overrides.items() if v is not None and k not in accepted]
    if unknown:
        raise click.UsageError(f"--{unknown[0].replace('_', '-')} does not apply to {model}")
    params.update({k: v for k, v in overrides.items() if v is not None})
    path = train(data, output, params, model=model, labels=labels, quiet=quiet)
    click.echo(f"saved {model} model to {path}")


@traces.command("predict")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Directory from 'melt traces train'.")
@click.option("--data", required=True, type=click.Path(), help="Spans to score.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="CSV with one row per trace.")
@click.option("--aggregation", type=AGGREGATION, default=None)
@click.pass_context
def predict_command(ctx: click.Context, model_dir: str, data: str, output: str, aggregation: str | None) -> None:
    """Score every trace; is_anomaly uses the ensemble threshold on the calibrated score."""
    from melt.pipeline.trace_models import predict

    table = predict(model_dir, data, output, aggregation=aggregation,
                    threshold=settings_of(ctx).ensemble.threshold)
    click.echo(f"scored {len(table):,} traces, {int(table['is_anomaly'].sum()):,} anomalous; wrote {output}")


@traces.command("evaluate")
@click.option("--model", "model_dir", required=True, type=click.Path())
@click.option("--normal-data", type=click.Path(), default=None, help="Spans of normal traces.")
@click.option("--anomaly-data", type=click.Path(), default=None, help="Spans of anomalous traces.")
@click.option("--test-dir", type=click.Path(file_okay=False), default=None,
              help="Directory of dataset*/ with normal_traces.parquet and abnormal_traces.parquet.")
@click.option("--aggregation", type=AGGREGATION, default=None)
@click.option("--output", type=click.Path(file_okay=False), default="evaluation", show_default=True,
              help="Where evaluation_results.json and the PNG plots go.")
@click.pass_context
def evaluate_command(ctx: click.Context, model_dir: str, normal_data: str | None, anomaly_data: str | None,
                     test_dir: str | None, aggregation: str | None, output: str) -> None:
    """ROC AUC, precision, recall, F1, specificity, separation ratio and plots."""
    from melt.pipeline.trace_models import evaluate

    results = evaluate(model_dir, output, normal=normal_data, anomalous=anomaly_data, test_dir=test_dir,
                       aggregation=aggregation, threshold=settings_of(ctx).ensemble.threshold)
    summary = results.get("overall") or next(iter(results["datasets"].values()))
    click.echo(f"ROC AUC {summary['roc_auc']:.3f}  precision {summary['precision']:.3f}  recall {summary['recall']:.3f}  "
               f"F1 {summary['f1']:.3f}  specificity {summary['specificity']:.3f}; wrote {output}/evaluation_results.json")


@traces.command("export")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Directory from 'melt traces train'.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="TorchScript file to write (model.ts).")
def export_command(model_dir: str, output: str) -> None:
    """Write the trained scorer as TorchScript, loadable with torch.jit.load without melt (docs/traces.md)."""
    from melt.pipeline.trace_models import export

    path = export(model_dir, output)
    click.echo(f"wrote TorchScript model to {path}")
