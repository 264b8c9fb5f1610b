"""Fitting and scoring on a Dask cluster: the same score table, computed where the data lies.

``melt detect --dask ADDRESS`` (or ``local:N``, a :class:`distributed.LocalCluster` of N one-thread
workers) hands each step to the workers, which read their own part of the bundle
(:mod:`melt.core.partitions`); only models, scores and small tables come back:

- a detector that fits by parts (``fit_rounds``) is fitted in map/reduce rounds over its parts (a
  service's rows, or a shard of whole traces), each part mapped on a worker; the rounds are pooled
  on the client, or, for a detector that ``trains_on_worker`` (a network trained on what the parts
  sent), by a task on a worker, where the model then stays;
- any other detector is fitted by one task, on the frames it reads (its ``signal`` and ``reads``)
  before the training cutoff, or on ``--train``'s bundle; the model stays on the worker's memory and
  goes to the scoring tasks from there;
- each detector scores its parts: one task per service for a detector whose ``partition`` is
  ``"service"``, one per shard of whole traces for ``"trace"``, the whole bundle in one task
  otherwise (a plugin that declares nothing);
- the dependency graph's call table is summed over trace shards;
- after the incidents are grouped on the client, the workers say which services served requests in
  each incident's window, return the history of the one metric each report forecasts, and (for
  incident pages) the rows of each incident's services in its window.

The score table is the one a run without Dask builds (:func:`melt.pipeline.fitting.score_all`'s
order), so incidents and reports are the same: ``tests/test_dask.py`` checks it on a LocalCluster.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import pandas as pd

from melt.core import partitions
from melt.core.bundle import MeltBundle
from melt.core.detector import CALIBRATE, Detector
from melt.core.errors import ConfigError, MeltError, PluginError
from melt.core.progress import log
from melt.core.registry import LeftOut, build_detector, get_plugin
from melt.core.settings import ReportSettings, Settings
from melt.pipeline.dask_tasks import (
    active_task,
    calls_task,
    early_task,
    fit_summary,
    fit_task,
    forecast_task,
    frames_of,
    page_task,
    part_map_task,
    score_task,
    seen_task,
    services_task,
    time_range_task,
)
from melt.pipeline.fitting import SCORE_ORDER, dropped, score_all, too_little
from rca.graph import call_table, graph_of_calls

if TYPE_CHECKING:
    from melt.reports.detail import RowDrawer

LOCAL = "local:"
CONNECT_TIMEOUT = "10s"  # how long a scheduler address may take to answer


@dataclass
class DaskScores:
    """What the workers computed: the score table and what the stages after it read."""

    scores: pd.DataFrame
    signal_of: dict[str, str]
    graph: nx.DiGraph
    skipped: list[LeftOut] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)  # per task: key, detector, part, seconds


@contextlib.contextmanager
def connect(spec: str, memory_limit: str | float | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``spec``: a scheduler address, or ``local:N`` for a
    LocalCluster of N worker processes with one thread each, ``local:N:LIMIT`` with that memory
    limit per worker (``4GiB``; default ``memory_limit``, else an equal share of this machine's memory).

    Raises:
        ConfigError: ``spec`` is not ``local:N`` or an address, or ``distributed`` is not installed.
        MeltError: the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("--dask needs the 'distributed' package (pip install distributed)") from None
    if spec.startswith(LOCAL):
        count, _, limit = spec[len(LOCAL):].partition(":")
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--dask {spec}: want local:N with N >= 1 workers (or local:N:LIMIT, e.g. local:2:4GiB)")
        if limit:
            from dask.utils import parse_bytes

            try:
                memory_limit = parse_bytes(limit)
            except ValueError:
                raise ConfigError(f"--dask {spec}: '{limit}' is not a memory size (e.g. 4GiB)") from None
        # the scheduler's HTTP port free, not 8787: another cluster (or melt run) may hold that one
        cluster = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True,
                               memory_limit=memory_limit or "auto", dashboard_address=":0",
                               silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    if "://" not in spec and ":" not in spec:
        raise ConfigError(f"--dask {spec}: want a scheduler address (tcp://host:8786) or local:N")
    try:
        client = Client(spec, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise MeltError(f"--dask {spec}: cannot reach the scheduler ({exc})".splitlines()[0]) from None
    with client:
        yield client


def workers(client: Any) -> int:
    return max(len(client.scheduler_info().get("workers", {})), 1)


def trace_shards(client: Any) -> int:
    """How many shards of whole traces a run splits the traces into: a few per worker."""
    return 4 * workers(client)


def fit_on_workers(client: Any, root: str, names: list[str], settings: Settings, cutoff: pd.Timestamp | None,
                   round_tasks: list[dict[str, Any]],
                   then: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """Per detector, a future of its fit (:func:`fit_task`'s result): one task each, or rounds over
    the services for those that fit by parts (their parts' times go to ``round_tasks``).

    The whole fits are submitted first and ``then(name, future)`` is called for each as soon as
    its future exists, so the work after them (scoring) is queued while the client pools the
    rounds, whose tasks jump the queue.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    fitted = {}
    for name in [n for n in names if not fits_by_parts(n) or get_plugin(n).cls.trains_on_worker]:
        task = fit_by_parts_task if fits_by_parts(name) else fit_task
        fitted[name] = client.submit(task, root, name, settings, cutoff, key=f"fit-{name}", pure=False)
        if then is not None:
            then(name, fitted[name])
    by_parts = [n for n in names if fits_by_parts(n) and not get_plugin(n).cls.trains_on_worker]
    if by_parts:  # in rounds, each service's part on a worker; the detectors' rounds side by side, so
        # that the workers take one detector's parts while the client pools another's round
        with ThreadPoolExecutor(len(by_parts), thread_name_prefix="melt-fit") as pool:
            jobs = {pool.submit(fit_by_parts, client, root, name, settings, cutoff): name for name in by_parts}
            for job in as_completed(jobs):
                name, result = jobs[job], job.result()
                round_tasks.extend(result.pop("tasks"))
                result.pop("pooling", None)  # the client's own time, not a task's
                fitted[name] = shipped(client, result)
                if then is not None:
                    then(name, fitted[name])
    return {name: fitted[name] for name in names}  # the order of a run without Dask (ties follow it)


def fit_by_parts_task(root: str, name: str, settings: Settings, cutoff: pd.Timestamp | None) -> dict[str, Any]:
    """:func:`fit_by_parts` driven from a task on a worker, for a detector that ``trains_on_worker``:
    what its parts send is pooled, and the network trained, on that worker, and the model stays
    there as a whole fit's does.

    The task leaves the worker's thread pool only while it waits for its parts
    (:func:`distributed.secede`), so that they may run on this worker too, and rejoins it (waiting
    for a free thread) before it pools and trains: the training then takes one of the worker's
    threads like any task, instead of running beside as many other tasks as the worker has threads.
    """
    from distributed import get_client

    result = fit_by_parts(get_client(), root, name, settings, cutoff, waiting=_seceded)
    result["seconds"] = result.pop("pooling", None)  # its own work; the parts' are timed as rounds
    return result


@contextlib.contextmanager
def _seceded() -> Iterator[None]:
    """Out of this worker's thread pool while inside; back in (waiting for a free thread) after."""
    from distributed import rejoin, secede

    secede()
    try:
        yield
    finally:
        rejoin()


class TooLittleData(Exception):
    """The parts of a fit by parts hold fewer rows than ``detect.min_train_rows``."""

    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.rows = rows


def shipped(client: Any, value: Any) -> Any:
    """A future of ``value`` made on the client (a model): a task that returns it, not scattered data,
    so that the scheduler can make it again on another worker when the one holding it is restarted
    (a worker past its memory limit is)."""
    return client.submit(_same, value, pure=False)


def _same(value: Any) -> Any:
    return value


def fits_by_parts(name: str) -> bool:
    """Whether detector ``name`` is fitted part by part (:meth:`Detector.fit_calibrated_by_parts`):
    it declares rounds and scores by service or by trace shard."""
    detector = get_plugin(name).cls
    return bool(detector.fit_rounds) and detector.partition in ("service", "trace")


def fit_by_parts(client: Any, root: str, name: str, settings: Settings, cutoff: pd.Timestamp | None,
                 waiting: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> dict[str, Any]:
    """Fit detector ``name`` in rounds over its parts of the training rows (each part read and
    mapped on a worker, the small results pooled here), as :func:`fit_task` reports a fit;
    ``waiting()`` is entered while the parts run (:func:`fit_by_parts_task`'s).

    The parts are the services of every frame the detector reads (a service with spans but no
    lines still names a peer), or for a detector scored by trace shard the same shards of whole
    traces; the training split's trace list is read once, on a worker.
    """
    detector = build_detector(name, settings.detector_params(name))
    frames = frames_of(name)
    if detector.partition == "trace":
        shards = trace_shards(client)
        fit_parts: list[tuple[str, Any]] = [("trace", (k, shards)) for k in range(shards)]
    else:
        listed = [client.submit(services_task, root, frame, pure=False) for frame in frames]
        with waiting():
            fit_parts = [("service", s) for s in sorted(set().union(*(task.result() for task in listed)))]
    early = client.submit(early_task, root, cutoff, pure=False) \
        if cutoff is not None and {"logs", "traces"} & set(frames) else None
    tasks: list[dict[str, Any]] = []

    waited = [0.0]  # seconds spent waiting for the parts: the rest of the fit is pooling

    def map_parts(current: Detector, step: int) -> list[Any]:
        began = time.perf_counter()
        try:
            return _map_parts(current, step)
        finally:
            waited[0] += time.perf_counter() - began

    def _map_parts(current: Detector, step: int) -> list[Any]:
        copy = shipped(client, current)  # a new key each round: the state changed since the last
        with waiting():
            got = client.gather([client.submit(part_map_task, root, name, part, cutoff, copy, step, early,
                                               priority=10, pure=False) for part in fit_parts])
        copy.release()
        label = "calibrate" if step == CALIBRATE else str(step)
        tasks.extend({"detector": name, "part": f"fit-round-{label}", "seconds": t} for _, t, _ in got)
        if step == 0:  # the rows to fit on, counted as the first round reads them
            rows = sum(n for _, _, n in got)
            if detector.signal != "events" and rows < settings.detect.min_train_rows:
                raise TooLittleData(rows)
            failed = next((value for value, _, _ in got if isinstance(value, Exception)), None)
            if failed is not None:
                raise failed
        return [value for value, _, _ in got]

    began = time.perf_counter()
    try:
        detector.fit_calibrated_by_parts(map_parts)
    except TooLittleData as exc:
        return {"model": None, "tasks": tasks, "notes": [too_little(name, detector.signal, exc.rows, settings)]}
    except MeltError:
        raise
    except Exception as exc:  # a plugin's failure drops that plugin, not the run
        return {"model": None, "notes": [dropped(name, "fit", exc)], "tasks": tasks}
    return {"model": detector, "notes": [], "tasks": tasks, "pooling": time.perf_counter() - began - waited[0]}


def _parts(detector: type[Detector], shards: int, services: dict[str, list[str]]) -> list[tuple[str, Any]]:
    if detector.partition == "service":
        return [("service", s) for s in services.get(detector.signal, [])] or [("whole", None)]
    if detector.partition == "trace":
        return [("trace", (k, shards)) for k in range(shards)]
    return [("whole", None)]


def dask_scores(client: Any, data: str | Path, names: list[str], settings: Settings,
                train_dir: str | Path | None = None, models: dict[str, Detector] | None = None,
                quiet: bool = False) -> DaskScores:
    """Fit (unless ``models`` are given) and score ``names`` on the workers; see the module doc.

    Raises:
        PluginError: not one detector could be fitted, or every one failed to score.
    """
    from distributed import as_completed

    root = str(Path(data).resolve())
    shards = trace_shards(client)
    skipped: list[LeftOut] = []
    round_tasks: list[dict[str, Any]] = []  # the parts of fits by parts, timed
    signals = sorted({get_plugin(name).cls.signal for name in (names if models is None else models)})
    listed = {signal: client.submit(services_task, root, signal, priority=100, pure=False) for signal in signals}
    services = {signal: task.result() for signal, task in listed.items()}
    scored: list[Any] = []
    parts: dict[Any, tuple[str, tuple[str, Any]]] = {}  # task key -> detector, part (in submission order)

    seen: dict[str, Any] = {}  # per signal scored by service: when the whole data has rows (a future)

    def score_parts(name: str, future: Any) -> None:
        detector = get_plugin(name).cls
        if detector.partition == "service" and detector.signal not in seen:
            seen[detector.signal] = client.submit(seen_task, root, detector.signal, priority=100, pure=False)
        for part in _parts(detector, shards, services):
            task = client.submit(score_task, root, future, part, seen.get(detector.signal) if part[0] == "service" else None,
                                 key=f"score-{name}-{part[0]}-{part[1]}", pure=False)
            scored.append(task)
            parts[task.key] = (name, part)

    if models is not None:
        fitted = {name: shipped(client, {"model": model, "notes": []}) for name, model in models.items()}
        for name, future in fitted.items():
            score_parts(name, future)
    else:
        cutoff = None
        if train_dir is None:
            start, end = client.submit(time_range_task, root, priority=100, pure=False).result()
            cutoff = start + (end - start) * settings.detect.train_fraction
        fit_root = str(Path(train_dir).resolve()) if train_dir else root
        fitted = fit_on_workers(client, fit_root, names, settings, cutoff, round_tasks, then=score_parts)
    graph_tasks = [client.submit(calls_task, root, k, shards, pure=False) for k in range(shards)] \
        if partitions.frame_path(root, "traces") else []
    total = len(scored)
    log(f"dask: {len(fitted)} detector(s), {total} scoring task(s) on {workers(client)} worker(s)", quiet)
    results: dict[Any, dict[str, Any]] = {}
    tasks: list[dict[str, Any]] = []
    for done, future in enumerate(as_completed(scored), start=1):
        result = future.result()
        future.release()  # the worker may drop its copy now: results must not pile up in its memory
        results[future.key] = result
        name, part = parts[future.key]
        tasks.append({"detector": name, "part": f"{part[0]}:{part[1]}", "seconds": result["seconds"]})
        if done % max(total // 10, 1) == 0 or done == total:
            log(f"dask: scored {done}/{total} parts", quiet)
    # what each fit left: its notes and time (the model itself stays on the workers)
    fit_info = {name: client.submit(fit_summary, fitted[name], pure=False).result() for name in fitted}
    for name, info in fit_info.items():
        skipped.extend(info["notes"])
        tasks.extend(info["tasks"])  # the rounds of a fit by parts driven from a worker
        if info["seconds"] is not None:
            tasks.append({"detector": name, "part": "fit", "seconds": info["seconds"]})
    tasks.extend(round_tasks)
    signal_of, frames = {}, []
    for name in fitted:
        got = [results[key] for key, (owner, _) in parts.items() if owner == name]
        for result in got:
            skipped.extend(n for n in result["notes"] if n not in skipped)
        if not fit_info[name]["fitted"]:
            continue
        signal_of[name] = get_plugin(name).cls.signal
        frames.extend(r["scores"] for r in got if r["scores"] is not None and len(r["scores"]))
    for note in skipped:
        log(f"skipped {note}", quiet, stage="melt warning")
    if not signal_of:
        raise PluginError(str(skipped[0]) if skipped else "no detector could be fitted")
    scores = (pd.concat(frames, ignore_index=True).sort_values(SCORE_ORDER, kind="stable", ignore_index=True)
              if frames else score_all({}, MeltBundle(validate=False), quiet=True))
    calls, nodes = call_table(None), set()
    for task in graph_tasks:
        part, names_seen = task.result()
        calls = pd.concat([calls, part], ignore_index=True) if len(part) else calls
        nodes.update(names_seen)
    graph = graph_of_calls(calls, sorted(nodes), settings.rca.topology_file)
    return DaskScores(scores, signal_of, graph, skipped, tasks)


def fetch_models(client: Any, data: str | Path, names: list[str], settings: Settings,
                 quiet: bool = False) -> tuple[dict[str, Detector], list[LeftOut]]:
    """``melt train --dask``: the detectors fitted on the workers (:func:`fit_on_workers`); the models come back."""
    futures = fit_on_workers(client, str(Path(data).resolve()), names, settings, None, [])
    models, skipped = {}, []
    for name, future in futures.items():
        result = future.result()
        skipped.extend(result["notes"])
        if result["model"] is not None:
            models[name] = result["model"]
            log(f"fitted {name} on a worker", quiet)
    if not models:
        raise PluginError(str(skipped[0]) if skipped else "no detector could be fitted")
    return models, skipped


def active_services(client: Any, data: str | Path, windows: list[tuple[pd.Timestamp, pd.Timestamp]]) -> list[set[str]]:
    """Per window, the services with spans or log lines in it (:func:`rca.terms.involved`), each
    service's rows checked by its own task."""
    root = str(Path(data).resolve())
    if not windows:
        return []
    tasks = [(service, client.submit(active_task, root, name, service, windows, pure=False))
             for name in ("traces", "logs") if partitions.frame_path(root, name) is not None
             for service in client.submit(services_task, root, name, pure=False).result()]
    found: list[set[str]] = [set() for _ in windows]
    for service, task in tasks:
        for window, hit in zip(found, task.result(), strict=True):
            if hit:
                window.add(service)
    return found


def worker_forecast(client: Any, data: str | Path, candidates: list[dict[str, Any]], evidence: list[dict[str, Any]],
                    origin: pd.Timestamp, settings: ReportSettings) -> dict[str, Any] | None:
    """A report's forecast block (:func:`melt.reports.report_forecast.report_forecast`), made on a
    worker from the metric's history there: only the block comes back."""
    return client.submit(forecast_task, str(Path(data).resolve()), candidates, evidence, origin, settings,
                         pure=False).result()


def page_rows(client: Any, data: str | Path, incidents: list[Any], reports: list[dict[str, Any]],
              settings: Settings) -> RowDrawer:
    """What each incident page draws from the data's rows (:func:`melt.reports.detail.drawn_rows`),
    made on a worker from the rows of the incident's services, from the lookback before it to its
    end: one task per incident, all submitted now; only the drawn records come back."""
    from melt.reports.detail import involved_services

    root = str(Path(data).resolve())
    step = settings.ensemble.window

    def submit(incident: Any, evidence: list[dict[str, Any]], services: list[str]) -> Any:
        return client.submit(page_task, root, services, evidence, incident.start - settings.rca.lookback,
                             (incident.start, incident.end), step, pure=False)

    by_id = {r["incident_id"]: r for r in reports}
    submitted = {incident.id: submit(incident, by_id[incident.id]["evidence"], involved_services(incident, by_id[incident.id]))
                 for incident in incidents if incident.id in by_id}

    def drawn(incident: Any, evidence: list[dict[str, Any]], services: list[str]) -> dict[str, Any]:
        future = submitted.pop(incident.id, None) or submit(incident, evidence, services)
        return future.result()

    return drawn


def merged(ranges: list[tuple[pd.Timestamp, pd.Timestamp]]) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Overlapping ``[start, end)`` ranges joined."""
    out: list[list[pd.Timestamp]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(start, end) for start, end in out]


def check_supported(settings: Settings, model_dir: str | Path | None) -> None:
    """What ``--dask`` does not run yet, as one clear line before any work."""
    if settings.detect.retrain_every is not None and model_dir is None:
        raise ConfigError("--dask does not run rolling refits (detect.retrain_every); leave one of them out")
