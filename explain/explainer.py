"""Explain many incidents: provider choice, cache, bounded concurrency and fallback to the template.

The template provider always works, so an explanation never blocks a report: when the LLM is down,
slow or ungrounded, the report carries the template explanation and the reason in
``explanation_fallback``. Answers are cached by the hash of the facts, the provider, the model and
the prompt version, so a rerun over the same incidents does not pay twice.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explain.facts import facts_hash
from explain.template import TemplateExplainer
from melt.core.progress import log
from melt.core.settings import ExplainSettings
from melt.core.timeutil import format_duration


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "melt" / "explanations"


class ExplanationCache:
    """One JSON file per key; written atomically, so concurrent runs never read half a file."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def get(self, key: str) -> dict[str, Any] | None:
        file = self.directory / f"{key}.json"
        try:
            return json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump(value, out)
        os.replace(temporary, self.directory / f"{key}.json")


@dataclass
class ExplainStats:
    """What happened over one run, for the CLI's summary line."""

    llm: int = 0
    cached: int = 0
    fallbacks: list[str] = field(default_factory=list)


class Explainer:
    """``explain_all(facts_list)``: one explanation dict per facts, in order.

    Args:
        settings: the ``explain`` settings; ``provider`` picks the template or the LLM.
        keep_prompts: overrides ``settings.keep_prompts``.
        environ: where the API key is read (default: the process environment).
    """

    def __init__(self, settings: ExplainSettings, keep_prompts: bool | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.keep_prompts = settings.keep_prompts if keep_prompts is None else keep_prompts
        self.template = TemplateExplainer()
        self.llm = None
        if settings.provider == "openai":
            from explain.openai_provider import OpenAIExplainer

            self.llm = OpenAIExplainer(settings.openai, environ)
        self.cache = (ExplanationCache(settings.cache_dir or default_cache_dir())
                      if settings.cache and self.llm is not None else None)
        self.stats = ExplainStats()
        self._lock = threading.Lock()
        self._deadline: float | None = None

    def _one(self, facts: dict[str, Any]) -> dict[str, Any]:
        from explain.openai_provider import PROMPT_VERSION, ExplanationFailed

        if self.llm is None:
            return self.template.explain(facts)
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return self._fallback(facts, f"the run's LLM deadline ({format_duration(self.settings.deadline)}) passed")
        key = facts_hash(facts, self.llm.source, PROMPT_VERSION)
        cached = self.cache.get(key) if self.cache else None
        if cached is not None:
            with self._lock:
                self.stats.cached += 1
            return self._strip(cached)
        try:
            explanation = self.llm.explain(facts, self._deadline)
        except ExplanationFailed as exc:
            return self._fallback(facts, str(exc))
        except Exception as exc:  # whatever else happens on the way, the report keeps the template
            return self._fallback(facts, f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
        with self._lock:
            self.stats.llm += 1
        if self.cache:
            self.cache.put(key, explanation)
        return self._strip(explanation)

    def _fallback(self, facts: dict[str, Any], reason: str) -> dict[str, Any]:
        with self._lock:
            self.stats.fallbacks.append(reason)
        return self.template.explain(facts) | {"fallback": f"{self.llm.source if self.llm else 'llm'} failed: {reason}"}

    def _strip(self, explanation: dict[str, Any]) -> dict[str, Any]:
        return explanation if self.keep_prompts else {k: v for k, v in explanation.items() if k != "prompts"}

    def explain_all(self, facts_list: list[dict[str, Any]], quiet: bool = True) -> list[dict[str, Any]]:
        """One explanation per facts, in order. With an LLM, the run's time with it is bounded by
        ``explain.deadline``: reports still unexplained then take the template."""
        if self.llm is None:
            return [self._one(f) for f in facts_list]
        self._deadline = time.monotonic() + self.settings.deadline.total_seconds()
        log(f"explaining {len(facts_list)} incident(s) with {self.llm.source} "
            f"(up to {format_duration(self.settings.deadline)}; the template after that)", quiet)
        try:
            if len(facts_list) <= 1:
                return [self._one(f) for f in facts_list]
            with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
                return list(pool.map(self._one, facts_list))
        finally:
            self._deadline = None
