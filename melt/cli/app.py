"""The ``melt`` command group and its commands: each parses its arguments, calls one library
function and prints or writes the result.

Every error a user can cause is a :class:`melt.core.errors.MeltError`; the group prints it as one
line on stderr and exits with code 2 (:mod:`melt.cli.common`). Heavy imports happen inside the
commands.
"""

from __future__ import annotations

from typing import Any

import click

from melt.cli.common import MeltGroup, settings_of
from melt.cli.traces import traces
from melt.core.errors import ConfigError, DeliveryError, MeltError
from melt.core.version import __version__


@click.group(cls=MeltGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="melt")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: ./config.yaml if present, else built-in defaults).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """melt: anomalies across metrics, events, logs and traces, ranked to a root-cause service."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--services", type=int, default=None, help="Number of services (default from config: 12).")
@click.option("--duration", default=None, help="Simulated period, e.g. 2h.")
@click.option("--interval", default=None, help="Metric interval, e.g. 1m.")
@click.option("--faults", type=int, default=None, help="Number of injected faults.")
@click.option("--seed", type=int, default=None, help="Random seed; the same seed gives identical files.")
@click.option("--preset", type=click.Choice(["easy", "realistic", "hard"]), default=None, help="Difficulty.")
@click.option("--topology", "topology_file", type=click.Path(dir_okay=False), default=None, help="Topology YAML.")
@click.option("--requests-per-minute", "requests_per_minute", type=float, default=None, help="Mean request rate.")
@click.option("--fault-types", default=None,
              help="Comma-separated fault types, cycled in order (see docs/synth.md).")
@click.option("--fault-duration", default=None, help="Length of each fault, e.g. 10m.")
@click.option("--overlap/--no-overlap", default=None, help="Let fault windows overlap.")
@click.option("--force", is_flag=True, help="Replace the bundle in a non-empty --out directory.")
@click.option("--partitioned", is_flag=True,
              help="Write each frame as hive partitions by date and service (logs.parquet/date=.../service=.../).")
@click.pass_context
def generate(ctx: click.Context, out: str, force: bool, partitioned: bool, **options: Any) -> None:
    """Write a synthetic MELT bundle with injected faults and ground truth."""
    import os
    from pathlib import Path

    from melt.core.bundle import check_output_dir
    from synth.generate import generate as run_generate

    check_output_dir(out)  # before minutes of work, not after
    if not force and os.path.isdir(out) and any(Path(out).iterdir()):
        raise MeltError(f"{out} is not empty; choose another --out or pass --force to replace its bundle")

    if options["fault_types"] is not None:
        options["fault_types"] = [t.strip() for t in options["fault_types"].split(",") if t.strip()]
    settings = settings_of(ctx).with_overrides({f"synth.{key}": value for key, value in options.items()},
                                               "melt generate")
    bundle = run_generate(settings.synth, quiet=False)
    bundle.write(out, force=True, partitioned=partitioned)
    counts = ", ".join(f"{k}={v}" for k, v in bundle.summary().items())
    click.echo(f"wrote {out}: {counts}, faults={len(bundle.truth['faults'])}")


@cli.command()
@click.option("--data", required=True, type=click.Path(), help="Bundle directory to analyse.")
@click.option("--models", "models_spec", default="all", show_default=True, help="'all' or a comma-separated list.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the reports.")
@click.option("--train", "train_dir", type=click.Path(), default=None, help="Bundle of normal data to fit on.")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Fitted models from 'melt train'.")
@click.option("--retrain-every", default=None,
              help="Refit every period this long (e.g. 10m) on the detect.train_window before it (default from config: off).")
@click.option("--sink", "sinks", multiple=True, type=click.Choice(["files", "stdout", "webhook", "html"]),
              help="Where reports go (repeatable; default from config: files).")
@click.option("--explain", "provider", type=click.Choice(["template", "openai"]), default=None,
              help="Explanation provider (default from config: template).")
@click.option("--keep-prompts", is_flag=True, default=None, help="Store the LLM prompts in each report.")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False), default=None,
              help="Where undeliverable webhook reports go (default: OUT/spool).")
@click.option("--dask", "dask", default=None, metavar="ADDRESS|local:N",
              help="Fit and score on a Dask cluster: a scheduler address, or local:N worker processes (docs/scale.md).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def detect(ctx: click.Context, data: str, models_spec: str, out: str, train_dir: str | None, model_dir: str | None,
           retrain_every: str | None, sinks: tuple[str, ...], provider: str | None, keep_prompts: bool | None, spool_dir: str | None,
           dask: str | None, quiet: bool) -> None:
    """Detect incidents, rank root causes and deliver one JSON report per incident.

    An LLM that fails falls back to the template explanation (exit 0, with a warning); a webhook
    that fails leaves its reports in the spool for 'melt deliver' (exit 2, after every report is
    written).
    """
    from melt.pipeline.batch import detect as run_detect

    if train_dir and model_dir:
        raise MeltError("give either --train or --model, not both")
    if retrain_every and model_dir:
        raise MeltError("--retrain-every refits the detectors; it cannot use the fixed models of --model")
    settings = settings_of(ctx).with_overrides({"detect.retrain_every": retrain_every}, "--retrain-every")
    settings = settings.with_overrides({"explain.provider": provider, "explain.keep_prompts": keep_prompts or None,
                                        "report.spool_dir": spool_dir}, "melt detect")
    result = run_detect(data, models_spec, out, settings, train_dir=train_dir, model_dir=model_dir,
                        sinks=list(sinks) or None, quiet=quiet, dask=dask)
    stats = result.explain_stats
    if stats is not None and stats.fallbacks:
        click.echo(f"melt: warning: LLM explanation failed for {len(stats.fallbacks)} of {len(result.reports)} "
                   f"incident(s) ({stats.fallbacks[0]}); their reports carry the template explanation", err=True)
    if "stdout" not in (sinks or settings.report.sinks):
        click.echo(_table(result.reports))
        click.echo(f"{len(result.reports)} incident(s); reports in {out}/ (index.json)")
    for delivery in result.deliveries:
        if delivery.spooled:
            raise DeliveryError(
                f"webhook: {len(delivery.spooled)} of {len(result.reports)} report(s) not delivered "
                f"({delivery.error}); kept in {delivery.spool_dir}, resend with 'melt deliver --spool {delivery.spool_dir}'")
        if delivery.sink == "webhook":
            click.echo(f"webhook: delivered {delivery.delivered} report(s)", err=quiet)


@cli.command()
@click.option("--spool", "spool_dir", required=True, type=click.Path(file_okay=False),
              help="Spool directory written by a failed webhook delivery.")
@click.option("--url", default=None,
              help="Send to this http(s) URL instead of the one each report was spooled for.")
@click.pass_context
def deliver(ctx: click.Context, spool_dir: str, url: str | None) -> None:
    """Resend spooled reports to the webhook; each delivered report leaves the spool.

    Each report goes to the URL and payload format it was spooled with, unless --url is given;
    headers, variables and retries come from the current config. Several runs may share a spool.
    Stdout gets one line per entry that failed and a count of those delivered; stderr one line per
    kind of failure (undelivered, corrupt), and the exit code is 2 when there was any.
    """
    from pathlib import Path

    from melt.delivery.spool import FAILED_DIR, drain

    result = drain(spool_dir, settings_of(ctx).report.webhook, url)
    failed_dir = Path(spool_dir) / FAILED_DIR
    for name, why in result.failed:
        click.echo(f"not delivered: {name} ({why}); back in the spool")
    for name, why in result.set_aside:
        click.echo(f"set aside: {name} ({why}); moved to {failed_dir}")
    click.echo(f"delivered {len(result.sent)} report(s) from {spool_dir}")
    problems = []
    if result.set_aside:
        name, why = result.set_aside[0]
        problems.append(f"{len(result.set_aside)} corrupt spool entr{'y' if len(result.set_aside) == 1 else 'ies'} "
                        f"moved to {failed_dir}, never to be sent ({name}: {why})")
    if result.failed:
        name, why = result.failed[0]
        problems.append(f"{len(result.failed)} report(s) still undelivered ({name}: {why}); they stay in {spool_dir}")
    for problem in problems[:-1]:
        click.echo(f"melt: warning: {problem}", err=True)
    if problems:
        raise DeliveryError(problems[-1])


def _table(reports: list[dict[str, Any]]) -> str:
    rows = [("incident", "window (UTC)", "top root-cause candidates", "score")]
    for report in reports:
        window = report["window"]
        span = f"{window['start'][11:16]}-{window['end'][11:16]}"
        ranked = report["root_cause_analysis"]["ranked_causes"]
        top = ", ".join(c["service"] for c in ranked[:3])
        rows.append((report["incident_id"], span, top, f"{ranked[0]['score']:.2f}" if ranked else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


@cli.command()
@click.option("--data", required=True, type=click.Path(), help="Bundle of (mostly) normal data.")
@click.option("--models", "models_spec", default="all", show_default=True, help="'all' or a comma-separated list.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--dask", "dask", default=None, metavar="ADDRESS|local:N",
              help="Fit and score on a Dask cluster: a scheduler address, or local:N worker processes (docs/scale.md).")
@click.pass_context
def train(ctx: click.Context, data: str, models_spec: str, out: str, dask: str | None) -> None:
    """Fit detectors and save them for 'melt detect --model'."""
    from melt.pipeline.batch import train as run_train

    path = run_train(data, models_spec, out, settings_of(ctx), dask=dask)
    click.echo(f"saved models to {path}")


@cli.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["otlp", "jaeger", "csv", "parquet", "nezha"]))
@click.argument("src", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--signal", type=click.Choice(["metrics", "logs", "traces", "events"]), default=None,
              help="csv/parquet: the frame the table holds.")
@click.option("--map", "mappings", multiple=True, metavar="SRC=DST",
              help="csv/parquet: rename source column SRC to melt column DST (repeatable).")
@click.option("--wide/--long", default=None, help="csv/parquet metrics: one column per metric.")
@click.option("--time-unit", type=click.Choice(["auto", "s", "ms", "us", "ns"]), default=None,
              help="csv/parquet: unit of epoch-number times.")
@click.option("--duration-unit", type=click.Choice(["ns", "us", "ms", "s"]), default=None,
              help="csv/parquet traces: unit of span durations.")
@click.option("--service-from", default=None, help="csv/parquet: column to derive the service from.")
@click.option("--service-regex", default=None, help="Regex whose group 'service' is the service name.")
@click.option("--delimiter", default=None, help="csv: field separator, one character ('\\t' or 'tab' for a tab).")
@click.option("--encoding", default="utf-8", show_default=True,
              help="csv: text encoding of the files (a Python codec name, e.g. latin-1, cp1252, utf-16).")
@click.option("--subset", type=click.Choice(["rca", "normal"]), default=None,
              help="nezha: fault cases (rca_data) or fault-free data (construct_data).")
@click.option("--strict", is_flag=True, help="Stop at the first bad row instead of skipping and counting it.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--partitioned", is_flag=True, help="Write each frame as hive partitions by date and service.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def import_(ctx: click.Context, fmt: str, src: str, out: str, signal: str | None, mappings: tuple[str, ...],
            wide: bool | None, time_unit: str | None, duration_unit: str | None, service_from: str | None,
            service_regex: str | None, delimiter: str | None, encoding: str, subset: str | None, strict: bool,
            force: bool, partitioned: bool, quiet: bool) -> None:
    """Import FORMAT data from SRC (a file or directory) into a melt bundle.

    FORMAT is otlp (OTLP/JSON lines or documents), jaeger (Jaeger JSON), csv or parquet (generic
    tables, see --map), or nezha (the Nezha/TrainTicket layout, with ground truth). See docs/import.md.
    """
    from melt.importers import import_source
    from melt.importers.sources import check_encoding
    from melt.importers.table import DELIMITER_NAMES, check_delimiter

    if delimiter is not None:
        delimiter = check_delimiter(DELIMITER_NAMES.get(delimiter, delimiter))
    check_encoding(encoding)

    column_map = {}
    for item in mappings:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise MeltError(f"--map takes SRC=DST, got {item!r}")
        column_map[source] = target
    table = {"signal": signal, "map": column_map or None, "wide": wide, "time_unit": time_unit,
             "duration_unit": duration_unit, "service_from": service_from, "service_regex": service_regex,
             "delimiter": delimiter}
    nezha = {"subset": subset, "service_regex": service_regex}
    summary = import_source(fmt, src, out, settings_of(ctx), table=table, nezha=nezha, strict=strict, force=force,
                            quiet=quiet, encoding=encoding, partitioned=partitioned)
    for line in summary.lines():
        click.echo(line)


@cli.command()
@click.option("--reports", "reports_dir", required=True, type=click.Path(), help="Directory of incident reports.")
@click.option("--truth", required=True, type=click.Path(), help="truth.json with the faults.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the full result as JSON here.")
@click.option("--tolerance", default="5m", show_default=True, help="Slack around fault windows when matching.")
def evaluate(reports_dir: str, truth: str, out: str | None, tolerance: str) -> None:
    """Score reports against ground truth: incident P/R/F1, time to detect, AC@k, Avg@5, MRR, baselines."""
    import json
    from pathlib import Path

    from melt.core.timeutil import parse_duration
    from melt.evaluation.incidents import evaluate as run_evaluate
    from melt.evaluation.incidents import format_table, read_reports, read_truth

    try:
        window = parse_duration(tolerance)
    except ValueError as exc:
        raise ConfigError(f"--tolerance: {exc}") from exc
    result = run_evaluate(read_reports(reports_dir), read_truth(truth), window)
    click.echo(format_table(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
        click.echo(f"wrote {out}")


@cli.command()
def plugins() -> None:
    """List detector plugins (entry-point group melt.detectors) and any that failed to load."""
    from melt.core.registry import discover

    loaded, failures = discover()
    rows = [("name", "signal", "distribution", "target")]
    rows += [(p.name, p.signal, p.distribution, p.target) for p in loaded.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if failures:
        click.echo("\nfailed to load:")
        for f in failures:
            click.echo(f"  {f.name} ({f.distribution}, {f.target}): {f.reason}")


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Fitted models from 'melt train'.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (as 'melt --config FILE serve').")
@click.option("--host", default=None, help="Address to listen on (default from config: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default from config: 4318, OTLP/HTTP's).")
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Segments, state database and reports (default from config: serve.data_dir).")
@click.option("--retrain-every", default=None,
              help="Refit every period this long (e.g. 1h) of event time on the detect.train_window of stored "
                   "data before it (default from config: off).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.pass_context
def serve(ctx: click.Context, model_dir: str, config_path: str | None, host: str | None, port: int | None,
          data_dir: str | None, retrain_every: str | None, quiet: bool) -> None:
    """Receive OTLP/HTTP, detect incidents step by step, and serve the REST API and incident page.

    Runs until Ctrl-C or SIGTERM, then stops the step runner and flushes what it stored. See
    docs/serve.md for the endpoints and a collector config.
    """
    from melt.serve.app import serve as run_serve

    if config_path is not None:
        ctx.find_root().obj["config_path"] = config_path
    settings = settings_of(ctx).with_overrides({"serve.host": host, "serve.port": port, "serve.data_dir": data_dir},
                                               "melt serve")
    settings = settings.with_overrides({"detect.retrain_every": retrain_every}, "--retrain-every")
    run_serve(settings, model_dir, quiet=quiet)


cli.add_command(traces)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="melt")
