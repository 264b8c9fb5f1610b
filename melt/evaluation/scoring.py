"""Scoring against labels: point-wise and event-wise precision, recall and F1; log parsing accuracy.

Point-wise metrics follow the SKAB protocol (plain F1 with no point adjustment; FAR = false
positives / actual negatives, MAR = false negatives / actual positives). Event-wise metrics count a
labelled fault as found if an alert touches its window, and count false alarms as alert episodes
(runs of alerts, merged across short gaps) that touch no fault window, the NAB/Numenta view
operators care about.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd


def pointwise(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1, FAR and MAR of binary point predictions, and the confusion counts."""
    y, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp, fp, fn, tn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum()), int((~y & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "far": fp / (fp + tn) if fp + tn else 0.0, "mar": fn / (fn + tp) if fn + tp else 0.0,
            "confusion_matrix": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def alert_episodes(alerts: pd.DataFrame, gap: pd.Timedelta) -> pd.DataFrame:
    """Merge alert rows (``service``, ``timestamp``) into episodes per service: start, end."""
    if alerts.empty:
        return pd.DataFrame(columns=["service", "start", "end"])
    frame = alerts[["service", "timestamp"]].sort_values(["service", "timestamp"])
    new = frame["timestamp"].diff().gt(gap) | frame["service"].ne(frame["service"].shift())
    episode = new.cumsum()
    return frame.groupby(episode).agg(service=("service", "first"), start=("timestamp", "min"),
                                      end=("timestamp", "max")).reset_index(drop=True)


FIVE_MINUTES = pd.Timedelta("5min")


def eventwise(alerts: pd.DataFrame, faults: list[dict], services_per_fault: str = "affected_services",
              gap: pd.Timedelta = FIVE_MINUTES, margin: pd.Timedelta = FIVE_MINUTES) -> dict:
    """Fault recall and false-alarm episodes.

    A fault is found when an alert on one of its services (``affected_services`` by default) falls in
    [start, end + margin). An episode is a false alarm when it overlaps no fault window (with margin)
    of its service.
    """
    found = []
    for fault in faults:
        start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"]) + margin
        services = fault.get(services_per_fault) or [fault["root_cause_service"]]
        hit = alerts["service"].isin(services) & (alerts["timestamp"] >= start.floor("min")) & (alerts["timestamp"] < end)
        found.append(bool(hit.any()))
    episodes = alert_episodes(alerts, gap)
    false_alarm = np.ones(len(episodes), bool)
    for fault in faults:
        start, end = pd.Timestamp(fault["start"]).floor("min") - margin, pd.Timestamp(fault["end"]) + margin
        services = fault.get(services_per_fault) or [fault["root_cause_service"]]
        overlaps = episodes["service"].isin(services) & (episodes["start"] < end) & (episodes["end"] >= start)
        false_alarm &= ~overlaps.to_numpy()
    return {"faults": len(faults), "found": int(sum(found)), "recall": float(np.mean(found)) if found else 0.0,
            "episodes": len(episodes), "false_alarms": int(false_alarm.sum()), "found_per_fault": found}


def grouping_accuracy(truth: pd.Series, predicted: np.ndarray) -> float:
    """Share of lines whose predicted group is exactly the set of lines of their labelled group
    (grouping accuracy of log parsers, Zhu et al., ICSE-SEIP 2019)."""
    frame = pd.DataFrame({"truth": truth.to_numpy(), "pred": predicted})
    truth_size = frame.groupby("truth")["pred"].transform("size")
    pure = frame.groupby("pred")["truth"].transform("nunique") == 1
    pred_size = frame.groupby("pred")["truth"].transform("size")
    return float((pure & (pred_size == truth_size)).mean())


_SPACES = re.compile(r"\s+")
_JOINED_VALUES = re.compile(r"<\*>(?:[^\sA-Za-z0-9]*<\*>)+")  # <*>.<*>, <*>:<*>, <*><*>: one value
_VALUE_RUN = re.compile(r"<\*>(?:\s*<\*>)+")


def normalise_template(template: str) -> str:
    """A template in the form both sides of a parsing-accuracy comparison share.

    Whitespace runs become one space; values joined only by punctuation (``<*>.<*>``, ``<*>:<*>``) or
    standing next to each other (``<*> <*>``) become one ``<*>``: where one value ends and the next
    begins is a labelling choice, not a parsing result (Khan et al., ICSE 2022, rules DV and CV).
    """
    text = _SPACES.sub(" ", str(template)).strip()
    return _VALUE_RUN.sub("<*>", _JOINED_VALUES.sub("<*>", text))


def parsing_accuracy(truth: pd.Series, predicted: pd.Series) -> float:
    """Share of lines whose template text equals the labelled one, both normalised (:func:`normalise_template`)."""
    return float((truth.map(normalise_template).to_numpy() == predicted.map(normalise_template).to_numpy()).mean())
