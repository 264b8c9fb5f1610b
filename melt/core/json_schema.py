"""The JSON Schemas shipped in ``melt/core/schemas/`` (reports, LLM answers), loaded once, with one cached validator each."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_schema(name: str) -> dict[str, Any]:
    """``load_schema("report")`` is ``melt/core/schemas/report.schema.json``."""
    return json.loads(resources.files("melt.core").joinpath(f"schemas/{name}.schema.json").read_text())


@cache
def validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name))


def first_error(name: str, document: Any) -> str | None:
    """``"at <path>: <message>"`` for the first violation (in document order), or ``None``."""
    errors = sorted(validator(name).iter_errors(document), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return None
    return f"at {'/'.join(str(p) for p in errors[0].path) or 'the top level'}: {errors[0].message}"
