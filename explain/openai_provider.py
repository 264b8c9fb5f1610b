"""LLM explanations through the ``openai`` client, for any OpenAI-compatible server.

The model sees only the facts and must answer in the explanation schema, citing evidence ids.
Structured output uses ``response_format`` with the JSON schema; a server that rejects it (older
vLLM, Ollama, LM Studio builds) gets JSON mode instead, remembered for the rest of the run.
Transport retries (5xx, 429, timeouts, connection errors, with exponential backoff) are the
client's own (``max_retries``). An answer that is not valid gets one repair turn that quotes the
validation error; a second failure raises :class:`ExplanationFailed`, and the caller falls back
to the template. The API key is read from the environment variable named in config and never
appears in a message, a reason or a report.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from explain.answer import AnswerError, parse_answer, to_explanation
from explain.facts import evidence_ids
from melt.core.json_schema import load_schema
from melt.core.settings import OpenAISettings

PROMPT_VERSION = "2"
SYSTEM_PROMPT = """You are an SRE assistant that explains incidents in a microservice system.
You are given FACTS as JSON: the incident, the ranked root-cause candidates with their call paths,
and evidence items, each with an id such as E3, and, when present, "forecast": where the top cause's
metric is heading (expected value and 95% range at the horizon, direction, and when it reaches its
limit). Explain the most likely root cause for the on-call engineer; when there is a forecast, say
in one sentence where that metric is heading, and the time to its limit if one is given.
Rules:
- Use only the facts. Do not invent services, metrics, values or events.
- Every suggested cause lists the ids of the evidence items that support it; cite only ids present
  in the facts. You may also cite ids inline in the summary, e.g. (E3).
- Answer with one JSON object and nothing else, with exactly these keys:
  "summary" (2-4 sentences), "suggested_causes" (1-5 objects with "cause" and "evidence_ids"),
  "recommendations" (up to 6 short actions)."""


class ExplanationFailed(RuntimeError):
    """The server was unreachable, refused, or answered twice with something unusable."""


def _reason(exc: Exception) -> str:
    """A short reason without response bodies (they may echo request headers or a masked key)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} from the server"
    if isinstance(exc, openai.APIConnectionError):
        return "cannot connect to the server"
    return type(exc).__name__


class OpenAIExplainer:
    """``explain(facts)`` -> explanation dict, or :class:`ExplanationFailed`."""

    def __init__(self, settings: OpenAISettings, environ: dict[str, str] | None = None) -> None:
        import openai

        env = os.environ if environ is None else environ
        self.model = settings.model
        self.source = f"llm:{self.model}"
        self.temperature = settings.temperature
        self.timeout = settings.timeout
        # local OpenAI-compatible servers need no key, but the client insists on one
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=env.get(settings.api_key_env) or "none",
                                     timeout=settings.timeout, max_retries=settings.max_retries)
        self._json_schema_ok = True
        self._lock = threading.Lock()

    def messages(self, facts: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "FACTS:\n" + json.dumps(facts, default=str)}]

    def _complete(self, messages: list[dict[str, str]], deadline: float | None = None) -> str:
        """The answer's text; ``deadline`` (``time.monotonic()``) bounds each request's timeout."""
        import openai

        schema_format = {"type": "json_schema",
                         "json_schema": {"name": "explanation", "schema": load_schema("explanation"),
                                                                "strict": True}}
        while True:
            use_schema = self._json_schema_ok
            client = self._client
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ExplanationFailed("the run's LLM deadline passed")
                client = client.with_options(timeout=min(self.timeout, remaining))
            try:
                response = client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature,
                    response_format=schema_format if use_schema else {"type": "json_object"})
            except openai.BadRequestError:
                if not use_schema:
                    raise
                with self._lock:
                    self._json_schema_ok = False  # the server does not do json_schema: JSON mode from now on
                continue
            return _content(response)

    def explain(self, facts: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """A validated, grounded explanation, or :class:`ExplanationFailed` whatever went wrong: an
        unreachable or refusing server, or an answer of any shape (text/plain, HTML labelled as
        JSON, ``message: null``, a JSON array, ...)."""
        import openai

        known = evidence_ids(facts)
        messages = self.messages(facts)
        try:
            content = self._complete(messages, deadline)
            try:
                answer = parse_answer(content, known)
            except AnswerError as first:
                repair = messages + [
                    {"role": "assistant", "content": content},
                    {"role": "user", "content": f"Your answer was rejected: {first}. Answer again with one JSON "
                                                f"object that follows the rules, citing only the ids in the facts."}]
                try:
                    answer = parse_answer(self._complete(repair, deadline), known)
                except AnswerError as second:
                    raise ExplanationFailed(f"invalid answer after one repair: {second}") from None
                messages = repair
        except ExplanationFailed:
            raise
        except openai.OpenAIError as exc:
            raise ExplanationFailed(_reason(exc)) from None
        except Exception as exc:  # the client choked on what the server sent (not JSON, wrong shape)
            raise ExplanationFailed(f"unusable answer from the server ({type(exc).__name__})") from None
        return to_explanation(answer, self.source) | {"prompts": messages}


def _content(response: Any) -> str:
    """The first choice's text, whatever the server sent: ``""`` where there is none to read."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return ""
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None) if message is not None else None
    return content if isinstance(content, str) else ""
