"""Offline, deterministic explanation built from the fault signature, the path and the evidence.

Each evidence item of the top cause is mapped to a suggested cause by its signature (what kind
of anomaly, on which signal, in which feature), the way an SRE runbook reads symptoms. The text
cites evidence ids only from the facts, like the LLM provider must. When the facts hold a forecast
of the top cause's metric, a sentence says where it is heading and when it reaches its limit.
"""

from __future__ import annotations

from typing import Any

from explain.answer import cited_ids
from explain.facts import minutes_between

RESOURCE_CAUSES = {
    "cpu": "CPU saturation on {service} ({feature} {value} vs expected {low}-{high})",
    "memory": "memory pressure or a leak in {service} ({feature} {value} vs expected {low}-{high})",
    "gc": "long garbage-collection pauses in {service} ({feature} {value})",
    "pool": "connection-pool exhaustion in {service} ({feature} {value})",
    "latency": "{service} responds slowly ({feature} {value} vs expected {low}-{high})",
    "error": "{service} returns errors ({feature} {value})",
    "code_path": "{service} took another code path: {pattern} [{change}]",
    "reported": "{reporter} reports trouble calling {service}: {pattern} [{change}]",
}
# A trace detector that says which part of a trace was rare (``logtraceguard``'s ``reason``): the
# cause in words, and the runbook signature whose recommendation fits it.
TRACE_CAUSES = {
    "timing": "{service} responds slowly in traces ({feature}, trace score {value})",
    "errors": "{service} returns errors in traces ({feature}, trace score {value})",
    "structure": "{service}'s calls changed shape: {feature} makes or skips calls it usually does not (trace score {value})",
    "logs": "{service} writes unusual log lines in its calls ({feature}, trace score {value})",
}
TRACE_SIGNATURES = {"timing": "latency", "errors": "error", "structure": "code_path", "logs": "error"}
RECOMMENDATIONS = {
    "cpu": "Check CPU limits and throttling of {service}; scale out or profile the hot path.",
    "memory": "Inspect heap/RSS growth of {service}; look for a leak and OOM restarts.",
    "latency": "Profile {service}'s own processing ({feature}); check locks, GC and slow queries.",
    "error": "Read the stack traces of {service} around {start}; roll back the last change if it matches.",
    "change": "Review the {kind} of {service} just before the incident; roll it back if it matches.",
    "code_path": "Compare {service}'s logs around {start} with the usual sequence; the changed branch is in {feature}.",
    "downstream": "Check {service}'s dependencies on the path {path}.",
    "reported": "Check the health of {service} and the network between it and its callers; callers name it in {feature}.",
}


def _signature(item: dict[str, Any]) -> str:
    feature = str(item.get("feature", "")).lower()
    kind = str(item.get("anomaly_type", ""))
    if item.get("reason") in TRACE_SIGNATURES:
        return TRACE_SIGNATURES[item["reason"]]
    if item.get("component") == "events":
        return "change"
    if item.get("reported_by"):
        return "reported"
    if kind in ("error_burst", "new_template") or "error" in feature or "exception" in feature:
        return "error"
    if kind in ("new_pattern", "pattern_vanished", "pattern_grew"):
        return "code_path"
    for key in ("cpu", "memory", "gc", "pool"):
        if key in feature:
            return key
    return "latency"


def _range(item: dict[str, Any]) -> tuple[str, str]:
    rng = item.get("expected_range")
    if isinstance(rng, list | tuple) and len(rng) == 2:
        return str(rng[0]), str(rng[1])
    return "?", "?"


def _inside_expected_range(item: dict[str, Any]) -> bool:
    """A multivariate detector's top metric can be normal on its own; such a value names no cause."""
    rng, value = item.get("expected_range"), item.get("value")
    if not isinstance(rng, list | tuple) or len(rng) != 2 or not isinstance(value, int | float):
        return False
    low, high = rng
    if low is None and high is None:  # no range at all (a trace's score): nothing to be inside of
        return False
    return (low is None or low <= value) and (high is None or value <= high)


def _change(item: dict[str, Any]) -> str:
    """How a log pattern or template changed, in words."""
    kind, value = str(item.get("anomaly_type")), item.get("value")
    if kind in ("new_pattern", "new_template"):
        return "new"
    if "operation" in item or kind.startswith("pattern"):
        units = f"{item['operation']} calls" if item.get("operation") else "traces"
        return f"was in {_range(item)[1]} of {units}, now {value}"
    return f"{value} lines in a window, expected up to {_range(item)[1]}"


def suggested_causes(facts: dict[str, Any]) -> list[str]:
    """One cause per distinct signature of the top candidate's evidence, strongest first."""
    if not facts["top_causes"]:
        return []
    top = facts["top_causes"][0]["service"]
    causes: list[str] = []
    seen: set[str] = set()
    for item in facts["evidence"]:
        if item["service"] != top or _inside_expected_range(item):
            continue
        signature = _signature(item)
        if signature in seen:
            continue
        seen.add(signature)
        low, high = _range(item)
        if item.get("reason") in TRACE_CAUSES:
            value = item.get("value")
            causes.append(TRACE_CAUSES[item["reason"]].format(
                service=top, feature=item.get("feature"), value=f"{value:.4g}" if isinstance(value, int | float) else value)
                + f" [{item['id']}]")
        elif signature == "change":
            causes.append(f"recent {item.get('feature')} of {top}: {item.get('message', '')} [{item['id']}]")
        elif signature in ("code_path", "reported"):
            causes.append(RESOURCE_CAUSES[signature].format(service=top, pattern=f"\"{item.get('feature')}\"",
                                                            change=_change(item), reporter=item.get("reported_by"))
                          + f" [{item['id']}]")
        elif signature == "error" and item.get("template"):
            label = "new" if item.get("anomaly_type") == "new_template" else "bursting"
            causes.append(f"{label} error log template in {top}: \"{item['template']}\" [{item['id']}]")
        else:
            text = RESOURCE_CAUSES[signature].format(service=top, feature=item.get("feature"), value=item.get("value"),
                                                     low=low, high=high)
            causes.append(f"{text} [{item['id']}]")
    path = facts["top_causes"][0]["path"]
    if len(path) > 1:
        causes.append(f"callers {', '.join(path[:-1])} are affected through the call path {' -> '.join(path)}")
    return causes


def recommendations(facts: dict[str, Any]) -> list[str]:
    if not facts["top_causes"]:
        return []
    top = facts["top_causes"][0]
    out: list[str] = []
    for item in facts["evidence"]:
        if item["service"] != top["service"]:
            continue
        signature = {"gc": "memory", "pool": "latency"}.get(_signature(item), _signature(item))
        text = RECOMMENDATIONS[signature].format(service=top["service"], feature=item.get("feature"),
                                                 start=facts["incident"]["start"], kind=item.get("feature"),
                                                 path=" -> ".join(top["path"]))
        if text not in out:
            out.append(text)
    if len(top["path"]) > 1:
        out.append(RECOMMENDATIONS["downstream"].format(service=top["path"][0], path=" -> ".join(top["path"])))
    return out


def forecast_sentence(forecast: dict[str, Any]) -> str:
    """Where the top cause's metric is heading, in words (``forecast``: :func:`explain.facts.forecast_facts`)."""
    low, high = forecast["range_95"]
    text = (f"Forecast: {forecast['metric']} of {forecast['service']} is {forecast['direction']}, expected at "
            f"{forecast['expected']:.4g} (95% {low:.4g} to {high:.4g}) {forecast['horizon_min']:.0f} min after the incident")
    if forecast.get("time_to_limit"):
        text += (f"; it reaches its limit of {forecast['limit']:g} at {forecast['time_to_limit']} "
                 f"(in about {forecast['minutes_to_limit']:.0f} min)")
    return text + "."


class TemplateExplainer:
    """The offline provider: ``explain(facts)`` gives text, causes, recommendations and its source."""

    source = "template"

    def explain(self, facts: dict[str, Any]) -> dict[str, Any]:
        incident = facts["incident"]
        causes = suggested_causes(facts)
        minutes = minutes_between(incident["start"], incident["end"])
        if not facts["top_causes"]:
            where = f"in {', '.join(incident['services'])}" if incident["services"] else "that name no service"
            text = f"Anomalies {where} for {minutes:.0f} min; no root cause could be ranked."
        else:
            top = facts["top_causes"][0]
            others = [c["service"] for c in facts["top_causes"][1:]]
            cited = ", ".join(top["evidence_ids"][:4]) or "no direct evidence"
            text = (f"{incident['severity'].capitalize()} incident over {minutes:.0f} min affecting "
                    f"{', '.join(incident['services'][:5]) or top['service']}. The most likely root cause is {top['service']} "
                    f"(score {top['score']:.2f}; evidence {cited})")
            if causes:
                text += f": {causes[0]}"
            text += "."
            if len(top["path"]) > 1:
                text += f" The fault propagates to callers along {' -> '.join(top['path'])}."
            if others:
                text += f" Next candidates: {', '.join(others)}."
            if facts.get("forecast"):
                text += " " + forecast_sentence(facts["forecast"])
        advice = recommendations(facts)
        return {"text": text, "suggested_causes": causes, "recommendations": advice, "source": self.source,
                "cites": cited_ids({"text": text, "causes": causes, "advice": advice})}
