"""Rolling refits: score each period with detectors fitted on the data just before it.

Merlion's evaluator (Bhatnagar et al., 2021, "Merlion: A Machine Learning Library for Time Series")
retrains a model every ``retrain_freq`` on the most recent ``train_window`` of data, the way a
deployed detector lives. melt does the same for a bundle that spans a long period: every
``every``, the detectors are fitted on the ``window`` before the period (plus the fault-free
reference bundle, when one is given) and score that period only, reading the period before it as
context so that smoothing over trailing points starts warm. The baseline then follows slow
drift (a database that fills up, a request mix that moves over the day), which a fit on a few
fault-free minutes at one time of day reads as anomalies everywhere; and a fault that stays on for
a while is outvoted by the longer history rather than becoming the baseline at once.
"""

from __future__ import annotations

import pandas as pd

from melt.core.bundle import SIGNALS, TIME_COLUMNS, MeltBundle
from melt.core.detector import Detector
from melt.core.errors import PluginError
from melt.core.progress import log, progress
from melt.core.settings import Settings
from melt.core.timeutil import format_duration
from melt.pipeline.fitting import enough_training_data, fit_detectors, score_all


def periods(bundle: MeltBundle, every: pd.Timedelta) -> list[pd.Timestamp]:
    """Starts of the ``every``-long periods, aligned to ``every``, that hold rows of some signal."""
    starts = []
    for name in SIGNALS:
        frame = getattr(bundle, name)
        column = TIME_COLUMNS[name]
        if frame is not None and len(frame) and column in frame.columns:
            starts.append(frame[column].dt.floor(every).drop_duplicates())
    if not starts:
        return []
    return sorted(pd.concat(starts).drop_duplicates())


def rolling_scores(bundle: MeltBundle, names: list[str], settings: Settings, every: pd.Timedelta, window: pd.Timedelta,
                   reference: MeltBundle | None = None, quiet: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """Scores of every period of ``bundle``, each from detectors fitted on the ``window`` before it.

    A detector is left out of a period whose history has too little of its signal (the first
    periods of a bundle without ``reference``), or that has none of its signal to score; a period
    that no detector can score is skipped. Returns the scores and each detector's signal.

    Raises:
        PluginError: no period could be scored at all.
    """
    from melt.core.registry import get_plugin

    signal_of = {name: get_plugin(name).signal for name in names}
    starts = periods(bundle, every)
    parts, skipped = [], 0
    for number, start in enumerate(progress(starts, "periods", quiet, total=len(starts)), 1):
        near = bundle.slice_time(start - window, start + every)  # one pass over the whole bundle per period
        period, history = near.slice_time(start, None), near.slice_time(None, start)
        # scored with the period before it as context: detectors that smooth over trailing points, or
        # read windows of them, would otherwise score each period's first points unsmoothed
        with_context = near.slice_time(start - every, None)
        fit_on = reference.union(history) if reference is not None else history
        usable = [name for name in names
                  if period.rows(signal_of[name]) and enough_training_data(fit_on, signal_of[name], settings)]
        if not usable:
            skipped += 1
            continue
        models: dict[str, Detector] = fit_detectors(fit_on, usable, settings, quiet=True)
        scores = score_all(models, with_context, quiet=True)
        # the period's own rows only: a trace that began in it may run past its end, and the
        # next period scores that time with its own fit
        parts.append(scores[(scores["timestamp"] >= start) & (scores["timestamp"] < start + every)])
        log(f"period {number}/{len(starts)} {start:%Y-%m-%d %H:%M}: {', '.join(usable)} fitted on "
            f"the {format_duration(window)} before, {len(parts[-1])} score rows", quiet)
    if not parts:
        raise PluginError(f"no period of {format_duration(every)} could be scored: the {format_duration(window)} before each holds too little "
                          f"training data (give a fault-free bundle with --train)")
    if skipped:
        log(f"{skipped} period(s) without enough history or data were not scored", quiet)
    frames = [p for p in parts if len(p)]
    return (pd.concat(frames, ignore_index=True) if frames else parts[0]), signal_of

