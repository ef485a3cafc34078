from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

MAX_PAGE_SIZE = 500


def whole_number(raw: str) -> int | None:
    """ASCII digits only: int() also takes " 7", "1_0" and other scripts' digits."""
    return int(raw) if raw.isascii() and raw.isdigit() else None


def page_size(request: Request, default: int) -> int:
    """``?limit=``: a whole number from 1 to 500; anything else is a 400."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    size = whole_number(raw) or 0
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ValidationError({"limit": [f"Must be a whole number from 1 to {MAX_PAGE_SIZE}."]})
    return size


def limit_schema(default: int) -> dict[str, Any]:
    """How ?limit= looks in the OpenAPI schema."""
    return {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": default}
