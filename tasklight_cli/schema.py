"""A workload's parameters, as `tasklight workloads` shows them: each one's
type, bounds and default in a few words, read from the JSON Schema that
GET /api/workloads/ gives (pydantic's, for the workloads this project ships)."""

from __future__ import annotations

import json
from typing import Any

# How deep $ref, anyOf and the items of a list are followed: a schema that refers
# to itself (a tree of nodes) is named, not unrolled.
MAX_DEPTH = 4


def literal(value: Any) -> str:
    """A value as it is typed after ``-p NAME=``: JSON, compact."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def resolve(root: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a local ``$ref`` (``#/$defs/Format``) replaced by what it names,
    the outer keys (description, default) kept."""
    reference = schema.get("$ref")
    if not isinstance(reference, str) or not reference.startswith("#/"):
        return schema
    target: Any = root
    for key in reference[2:].split("/"):
        target = target.get(key) if isinstance(target, dict) else None
    if not isinstance(target, dict):
        return schema
    outer = {key: value for key, value in schema.items() if key != "$ref"}
    return {**target, **outer}


def bounds(low: Any, high: Any, low_open: bool = False, high_open: bool = False) -> str:
    """``0 to 3600``, ``>= 1``, ``< 10``."""
    if isinstance(low, int | float) and isinstance(high, int | float) and not (low_open or high_open):
        return f"{literal(low)} to {literal(high)}"
    parts = []
    if isinstance(low, int | float):
        parts.append(f"{'>' if low_open else '>='} {literal(low)}")
    if isinstance(high, int | float):
        parts.append(f"{'<' if high_open else '<='} {literal(high)}")
    return ", ".join(parts)


def count(low: Any, high: Any, unit: str) -> str:
    """``1 to 40 characters``, ``at least 3 items``, ``at most 5 items``."""
    if isinstance(low, int) and isinstance(high, int):
        return f"{low} to {high} {unit}"
    if isinstance(low, int):
        return f"at least {low} {unit}"
    if isinstance(high, int):
        return f"at most {high} {unit}"
    return ""


def kind(root: dict[str, Any], schema: Any, depth: int = 0) -> str:
    """What a value must be, in a few words: ``number 0 to 3600``, ``one of "csv", "json"``."""
    if not isinstance(schema, dict):
        return "any JSON"
    if depth > MAX_DEPTH:
        return "JSON"
    schema = resolve(root, schema)
    if isinstance(schema.get("$ref"), str):  # not a local one, or one that names nothing
        return str(schema["$ref"]).rsplit("/", 1)[-1] or "JSON"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        values = [literal(value) for value in schema["enum"]]
        return values[0] if len(values) == 1 else f"one of {', '.join(values)}"
    if "const" in schema:
        return literal(schema["const"])
    for combined in ("anyOf", "oneOf"):
        options = schema.get(combined)
        if isinstance(options, list) and options:
            return " or ".join(kind(root, option, depth + 1) for option in options)
    options = schema.get("allOf")
    if isinstance(options, list) and len(options) == 1:
        return kind(root, options[0], depth + 1)
    types = schema.get("type")
    if isinstance(types, list) and types:
        return " or ".join(kind(root, {**schema, "type": one}, depth + 1) for one in types)
    if types in ("number", "integer"):
        low, high = schema.get("minimum"), schema.get("maximum")
        low_open = high_open = False
        if isinstance(schema.get("exclusiveMinimum"), int | float):
            low, low_open = schema["exclusiveMinimum"], True
        if isinstance(schema.get("exclusiveMaximum"), int | float):
            high, high_open = schema["exclusiveMaximum"], True
        text = f"{types} {bounds(low, high, low_open, high_open)}".rstrip()
        if isinstance(schema.get("multipleOf"), int | float):
            text += f", a multiple of {literal(schema['multipleOf'])}"
        return text
    if types == "string":
        length = count(schema.get("minLength"), schema.get("maxLength"), "characters")
        return f"string of {length}" if length else "string"
    if types == "array":
        items = kind(root, schema["items"], depth + 1) if "items" in schema else "any JSON"
        length = count(schema.get("minItems"), schema.get("maxItems"), "items")
        return f"list of {items}" + (f", {length}" if length else "")
    if types == "object":
        return "object"
    if isinstance(types, str):
        return types  # boolean, null
    return "any JSON"


def parameters(params: Any) -> list[tuple[str, str, str]]:
    """(name, type with ``required`` or its default, description) for each parameter."""
    if not isinstance(params, dict) or not isinstance(params.get("properties"), dict):
        return []
    listed = params.get("required")
    required = listed if isinstance(listed, list) else []
    rows = []
    for name, raw in params["properties"].items():
        schema = resolve(params, raw) if isinstance(raw, dict) else {}
        words = kind(params, schema)
        if name in required:
            words += ", required"
        elif "default" in schema:
            words += f", default {literal(schema['default'])}"
        description = schema.get("description")
        rows.append((str(name), words, " ".join(str(description).split()) if description else ""))
    return rows


def describe(workloads: list[dict[str, Any]]) -> list[str]:
    """The lines `tasklight workloads` prints: each workload's name, title and
    description, then its parameters in aligned columns."""
    lines: list[str] = []
    for workload in workloads:
        if lines:
            lines.append("")
        title = workload.get("title")
        lines.append(f"{workload['name']}" + (f" ({title})" if isinstance(title, str) and title else ""))
        description = workload.get("description")
        if isinstance(description, str) and description.strip():
            lines.append(f"  {' '.join(description.split())}")
        rows = parameters(workload.get("params"))
        if not rows:
            lines.append("  no parameters")
            continue
        name_width = max(len(name) for name, _, _ in rows)
        kind_width = max(len(words) for _, words, _ in rows)
        for name, words, text in rows:
            lines.append(f"    {name.ljust(name_width)}  {words.ljust(kind_width)}  {text}".rstrip())
    return lines
