"""Check an LLM's answer: JSON, the explanation schema, and citations of evidence that exists.

An explanation is only useful to an on-call engineer if each claim can be traced to something a
detector saw. Every evidence id in the answer (in ``evidence_ids`` lists or written inline as
``E12``) must be one of the facts' ids; otherwise the answer is rejected as ungrounded.
"""

from __future__ import annotations

import json
import re
from typing import Any

from melt.core.json_schema import first_error

EVIDENCE_ID = re.compile(r"\bE\d+\b")


class AnswerError(ValueError):
    """The answer is not valid JSON, breaks the schema, or cites evidence the facts do not have."""


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def cited_ids(answer: dict[str, Any]) -> list[str]:
    """Every evidence id the answer mentions, in order of first mention."""
    found = [m for text in _strings(answer) for m in EVIDENCE_ID.findall(text)]
    return list(dict.fromkeys(found))


def parse_answer(content: str | None, known_ids: set[str]) -> dict[str, Any]:
    """The validated answer, or :class:`AnswerError` with a message fit to quote back to the model."""
    if not content or not content.strip():
        raise AnswerError("the answer was empty")
    text = content.strip()
    if text.startswith("```"):  # some servers wrap JSON mode output in a code fence
        text = text.strip("`").removeprefix("json").strip()
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    error = first_error("explanation", answer)
    if error:
        raise AnswerError(f"the answer breaks the schema {error}")
    unknown = [i for i in cited_ids(answer) if i not in known_ids]
    if unknown:
        raise AnswerError(f"the answer cites evidence that does not exist: {', '.join(unknown)} "
                          f"(known ids: {', '.join(sorted(known_ids, key=lambda i: int(i[1:])))})")
    return answer


def to_explanation(answer: dict[str, Any], source: str) -> dict[str, Any]:
    """The report's explanation fields from a validated answer."""
    return {
        "text": answer["summary"],
        "suggested_causes": [f"{c['cause']} [{', '.join(c['evidence_ids'])}]" for c in answer["suggested_causes"]],
        "recommendations": answer["recommendations"],
        "source": source,
        "cites": cited_ids(answer),
    }
