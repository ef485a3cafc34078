"""The API's request body parser."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's (strict: no NaN or Infinity), with a body nested deeper than
    Python's recursion limit a 400 like any other malformed JSON: DRF catches
    only ValueError, and 200 KB of brackets was a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
