"""The detect and train pipelines: bundle -> detectors -> ensemble -> rca -> explain -> report -> sinks.

Each stage only consumes what earlier stages produced; this module is the one place that wires
them together, so the CLI stays a thin layer over :func:`train` and :func:`detect`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import pandas as pd

from explain.explainer import Explainer, ExplainStats
from melt.core.bundle import MeltBundle
from melt.core.errors import BundleError
from melt.core.progress import log
from melt.core.registry import LeftOut, requested_names, resolve_models
from melt.core.settings import Settings
from melt.delivery.sinks import Delivery, HtmlSink, make_sinks
from melt.incidents.ensemble import ALERT_SIGNALS, Incident, group_incidents
from melt.pipeline.fitting import (
    check_detector_settings,
    fit_detectors,
    load_models,
    model_names,
    save_models,
    score_all,
    training_split,
)
from melt.pipeline.rolling import rolling_scores
from rca.graph import dependency_graph

if TYPE_CHECKING:
    from melt.reports.detail import RowDrawer

# a report's forecast block made elsewhere (a Dask worker): (ranked causes, evidence, origin) -> block
Forecaster = Callable[[list[dict[str, Any]], list[dict[str, Any]], pd.Timestamp], "dict[str, Any] | None"]


@dataclass
class DetectResult:
    """What ``detect`` produced: reports (also delivered to sinks), incidents and notes."""

    reports: list[dict[str, Any]]
    incidents: list[Incident]
    detectors: list[str]
    skipped: list[LeftOut] = field(default_factory=list)
    out_dir: Path | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    explain_stats: ExplainStats | None = None
    dask_tasks: list[dict[str, Any]] = field(default_factory=list)  # a Dask run's fit and score tasks, timed


def train(data: str | Path, models_spec: str, out_dir: str | Path, settings: Settings, quiet: bool = False,
          dask: str | None = None) -> Path:
    """Fit ``models_spec`` on all of bundle ``data`` and save the models; with ``dask`` (an address
    or ``local:N``) they are fitted on that cluster's workers, by one task each or by parts
    (:func:`melt.pipeline.dask_run.fit_on_workers`)."""
    requested_names(models_spec)
    check_detector_settings(settings)
    if dask is not None:
        from melt.core.partitions import present_signals
        from melt.pipeline.dask_run import connect, fetch_models

        MeltBundle.check_dir(data)
        names, skipped = resolve_models(models_spec, present_signals(data))
        for note in skipped:
            log(f"skipped {note}", quiet, stage="melt warning" if note.warn else "melt")
        with connect(dask) as client:
            models, _ = fetch_models(client, data, names, settings, quiet)
        return save_models(models, out_dir)
    bundle = MeltBundle.read(data)
    names, skipped = resolve_models(models_spec, bundle.signals())
    for note in skipped:
        log(f"skipped {note}", quiet, stage="melt warning" if note.warn else "melt")
    return save_models(fit_detectors(bundle, names, settings, quiet, skipped), out_dir)


def report_incidents(incidents: list[Incident], scores: pd.DataFrame, bundle: MeltBundle | None,
                     signal_of: dict[str, str], settings: Settings, graph: nx.DiGraph | None = None,
                     explainer: Explainer | None = None, quiet: bool = True, first_number: int = 0,
                     serving: Callable[[pd.Timestamp, pd.Timestamp], set[str]] | None = None,
                     metrics: pd.DataFrame | Forecaster | None = None) -> list[dict[str, Any]]:
    """Rank root causes, pick evidence and explain each incident: one validated report per incident.

    Explanations come from ``explainer`` (default: the offline template), all incidents at once so
    that an LLM provider can work on several concurrently. ``first_number`` is the first incident's
    position in the run (it seeds the random baseline; a stream passes its running count).
    ``serving(start, end)`` names the services that served requests then; by default they are read
    from ``bundle``'s spans and logs (a stream that no longer holds them keeps the names instead).
    The forecast of the top cause's metric (``report.forecast_horizon``) is made from ``metrics``,
    by default ``bundle``'s (a stream keeps a bounded history instead), or made elsewhere:
    ``metrics(candidates, evidence, origin)`` gives the block (a Dask run makes it on a worker, where
    the metric's rows are); a failed forecast costs a warning line and the block, never the report.
    """
    from explain.facts import build_facts
    from melt.reports.evidence import select_evidence
    from melt.reports.report import build_report, validate_report
    from melt.reports.report_forecast import report_forecast
    from rca.attribution import attribute_to_peers
    from rca.baselines import baseline_rankings
    from rca.rank import evidence_window, rank_root_causes
    from rca.terms import involved

    if graph is None:
        graph = dependency_graph(bundle.traces if bundle is not None else None, settings.rca.topology_file)
    if serving is None:
        def serving(start: pd.Timestamp, end: pd.Timestamp) -> set[str]:
            return involved(bundle.traces, bundle.logs, start, end) if bundle is not None else set()

    if metrics is None and bundle is not None:
        metrics = bundle.metrics
    explainer = explainer or Explainer(replace(settings.explain, provider="template"))
    threshold, rca = settings.ensemble.threshold, settings.rca
    parts = []
    for number, incident in enumerate(incidents, start=first_number):
        # the rows the ranking uses: the incident and the lookback before it
        start, end = evidence_window(incident, rca)
        on_path = serving(start, end)
        if incident.scope is not None:
            on_path &= incident.scope
        on_path = on_path or None
        nearby = scores[(scores["timestamp"] >= start) & (scores["timestamp"] < end)]
        # callers' complaints that name a service count, and are cited, as that service's evidence
        attributed = attribute_to_peers(nearby, signal_of)
        ranked = rank_root_causes(incident, attributed, graph, signal_of, rca, threshold, on_path)
        candidates = [c.__dict__ for c in ranked]
        ranked_services = [c["service"] for c in candidates] or incident.services
        evidence = select_evidence(attributed, ranked_services, signal_of, settings.report.max_evidence, threshold)
        for candidate in candidates:
            candidate["evidence_ids"] = [e["id"] for e in evidence if e["service"] == candidate["service"]]
        try:
            if callable(metrics):
                forecast = metrics(candidates, evidence, incident.end) \
                    if settings.report.forecast_horizon is not None else None
            else:
                forecast = report_forecast(candidates, evidence, metrics, incident.end, settings.report)
        except Exception as exc:  # noqa: BLE001 - a forecast is an extra: its failure never costs the report
            log(f"{incident.id}: no forecast ({type(exc).__name__}: {exc})", quiet, stage="melt warning")
            forecast = None
        facts = build_facts(incident.summary(), candidates, evidence, settings.explain.max_fact_tokens, forecast)
        own = nearby[nearby["detector"].map(signal_of).isin(ALERT_SIGNALS)]
        parts.append((incident, candidates, evidence, facts, forecast,
                      baseline_rankings(own, graph, on_path, number, rca.top_k)))
    explanations = explainer.explain_all([part[3] for part in parts], quiet)
    reports = []
    for (incident, candidates, evidence, _, forecast, baselines), explanation in zip(parts, explanations, strict=True):
        report = build_report(incident, candidates, evidence, explanation, forecast=forecast)
        report["root_cause_analysis"]["baselines"] = baselines
        reports.append(validate_report(report))
    return reports


def incidents_and_reports(scores: pd.DataFrame, signal_of: dict[str, str], bundle: MeltBundle, settings: Settings,
                          explainer: Explainer | None = None,
                          quiet: bool = True) -> tuple[list[Incident], list[dict[str, Any]], nx.DiGraph]:
    """The stages after scoring: the dependency graph of ``bundle``, incidents from ``scores``, one
    report each. ``melt detect`` and `melt serve`'s ``POST /api/detect`` both end here."""
    graph = dependency_graph(bundle.traces, settings.rca.topology_file)
    incidents = group_incidents(scores, signal_of, settings.ensemble, graph)
    log(f"{len(incidents)} incident(s)", quiet)
    return incidents, report_incidents(incidents, scores, bundle, signal_of, settings, graph, explainer, quiet), graph


def detect(data: str | Path, models_spec: str, out_dir: str | Path, settings: Settings,
           train_dir: str | Path | None = None, model_dir: str | Path | None = None,
           sinks: list[str] | None = None, quiet: bool = False, dask: str | None = None) -> DetectResult:
    """Run the whole pipeline on bundle ``data`` and deliver one report per incident.

    With ``dask`` (a scheduler address or ``local:N``), detectors are fitted and score on that
    cluster's workers, each reading its own part of the bundle (:func:`dask_detect`).

    Sinks and the explainer are built first, so a bad sink or provider setting fails before any
    detector runs. Explanations follow ``settings.explain``; a failing LLM falls back to the
    template (see ``DetectResult.explain_stats``), and a failing webhook spools
    (``DetectResult.deliveries``): nothing computed is lost.
    """
    requested_names(models_spec)
    check_detector_settings(settings)
    for given in (train_dir, model_dir):  # the inputs exist before any work starts
        if given is not None and not Path(given).is_dir():
            raise BundleError(f"{given}: directory not found")
    if model_dir is not None:
        model_names(model_dir)
    outlets = make_sinks(sinks or settings.report.sinks, out_dir, settings.report)
    explainer = Explainer(settings.explain)
    if dask is not None:
        return dask_detect(data, models_spec, out_dir, settings, train_dir, model_dir, dask, outlets, explainer, quiet)
    bundle = MeltBundle.read(data)
    log(f"read {data}: " + ", ".join(f"{k}={v}" for k, v in bundle.summary().items()), quiet)
    names, skipped = resolve_models(models_spec, bundle.signals())
    for note in skipped:
        log(f"skipped {note}", quiet, stage="melt warning" if note.warn else "melt")
    retrain_every = settings.detect.retrain_every
    if retrain_every is not None and model_dir is None:
        reference = MeltBundle.read(train_dir) if train_dir else None
        scores, signal_of = rolling_scores(bundle, names, settings, retrain_every, settings.detect.train_window,
                                           reference, quiet)
    else:
        if model_dir is not None:
            models = load_models(model_dir, names if models_spec.strip() != "all" else None)
            models = {n: m for n, m in models.items() if m.signal in bundle.signals()}
        else:
            fit_on = MeltBundle.read(train_dir) if train_dir else training_split(bundle, settings.detect.train_fraction)
            models = fit_detectors(fit_on, names, settings, quiet, skipped)
        signal_of = {name: model.signal for name, model in models.items()}
        scores = score_all(models, bundle, quiet, skipped)
    incidents, reports, graph = incidents_and_reports(scores, signal_of, bundle, settings, explainer, quiet)
    return delivered(incidents, reports, scores, bundle, signal_of, graph, settings, outlets, skipped, out_dir,
                     explainer, quiet)


def dask_detect(data: str | Path, models_spec: str, out_dir: str | Path, settings: Settings, train_dir: str | Path | None,
                model_dir: str | Path | None, dask: str, outlets: list[Any], explainer: Explainer,
                quiet: bool) -> DetectResult:
    """:func:`detect`'s stages with fitting and scoring on a Dask cluster (:mod:`melt.pipeline.dask_run`).

    The client holds the score table and the dependency graph, and asks the workers for what the
    reports read: which services served in each incident's window, each report's forecast (made
    where the metric's rows are), and (for incident pages) what each page draws from its services'
    rows, drawn where those rows are read. No row reaches the client.
    """
    from melt.core.partitions import present_signals
    from melt.pipeline.dask_run import (
        active_services,
        check_supported,
        connect,
        dask_scores,
        page_rows,
        worker_forecast,
    )
    from rca.rank import evidence_window

    check_supported(settings, model_dir)
    MeltBundle.check_dir(data)
    if train_dir is not None:
        MeltBundle.check_dir(train_dir)
    present = present_signals(data)
    names, skipped = resolve_models(models_spec, present)
    for note in skipped:
        log(f"skipped {note}", quiet, stage="melt warning" if note.warn else "melt")
    models = None
    if model_dir is not None:
        models = load_models(model_dir, names if models_spec.strip() != "all" else None)
        models = {n: m for n, m in models.items() if m.signal in present}
    with connect(dask) as client:
        found = dask_scores(client, data, names if models is None else list(models), settings, train_dir, models, quiet)
        scores, signal_of, graph = found.scores, found.signal_of, found.graph
        skipped.extend(found.skipped)
        incidents = group_incidents(scores, signal_of, settings.ensemble, graph)
        log(f"{len(incidents)} incident(s)", quiet)
        windows = [evidence_window(incident, settings.rca) for incident in incidents]
        active = dict(zip(windows, active_services(client, data, windows), strict=True))
        reports = report_incidents(incidents, scores, None, signal_of, settings, graph, explainer, quiet,
                                   serving=lambda start, end: set(active[(start, end)]),
                                   metrics=lambda causes, evidence, origin: worker_forecast(
                                       client, data, causes, evidence, origin, settings.report))
        pages = any(isinstance(sink, HtmlSink) for sink in outlets)
        drawn = page_rows(client, data, incidents, reports, settings) if pages else None
        result = delivered(incidents, reports, scores, MeltBundle(validate=False), signal_of, graph, settings, outlets,
                           skipped, out_dir, explainer, quiet, drawn)
    result.dask_tasks = found.tasks
    return result


def delivered(incidents: list[Incident], reports: list[dict[str, Any]], scores: pd.DataFrame, bundle: MeltBundle,
              signal_of: dict[str, str], graph: nx.DiGraph, settings: Settings, outlets: list[Any],
              skipped: list[LeftOut], out_dir: str | Path | None, explainer: Explainer, quiet: bool,
              rows: RowDrawer | None = None) -> DetectResult:
    """The last stage of :func:`detect`: incident pages, then every sink (files first). The pages
    draw from ``bundle``'s rows, or from what ``rows`` makes elsewhere (a Dask run's workers)."""
    pages = [sink for sink in outlets if isinstance(sink, HtmlSink)]
    if pages:  # the incident pages also draw the curves behind each report
        from melt.reports.detail import incident_details

        details = incident_details(incidents, reports, scores, bundle, signal_of, graph, settings, quiet, rows)
        for sink in pages:
            sink.details = details
    # files first, then the webhook and its spool: every report is kept before any sink can fail
    from melt.delivery.sinks import deliver_all

    deliveries = deliver_all(outlets, reports, [(note.detector, note.text) for note in skipped])
    return DetectResult(reports, incidents, list(signal_of), skipped, Path(out_dir) if out_dir else None, deliveries,
                        explainer.stats)
