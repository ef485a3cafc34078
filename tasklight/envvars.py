"""Reading settings from the environment, strictly.

django-environ takes "ture" for False, "1e3" for 13.0 and "0" for an interval
it then spins on. These helpers accept only what a variable can mean and stop
the process at start-up with ImproperlyConfigured naming the variable, the
value given and what is allowed. An empty value means unset: Compose and
``.env`` files write ``NAME=`` for "no value", which takes the default.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import overload

from django.core.exceptions import ImproperlyConfigured

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# ASCII digits only: int() and float() also take "1_000" and other scripts'
# digits, float() "nan" and "inf".
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
DECIMAL_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _given(name: str, environ: Mapping[str, str] | None) -> str | None:
    """The variable's value, stripped; None when unset or empty."""
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or None


def _unit(unit: str) -> str:
    return f" of {unit}" if unit else ""


@overload
def whole_number(
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int | None = None,
    unit: str = "",
    environ: Mapping[str, str] | None = None,
) -> int: ...
@overload
def whole_number(
    name: str,
    default: None,
    *,
    minimum: int,
    maximum: int | None = None,
    unit: str = "",
    environ: Mapping[str, str] | None = None,
) -> int | None: ...
def whole_number(
    name: str,
    default: int | None,
    *,
    minimum: int,
    maximum: int | None = None,
    unit: str = "",
    environ: Mapping[str, str] | None = None,
) -> int | None:
    """An integer from ``minimum`` to ``maximum`` (inclusive); ``default`` when unset."""
    value = _given(name, environ)
    if value is None:
        return default
    if maximum is None:
        allowed = f"a whole number{_unit(unit)}, {minimum} or more"
    else:
        allowed = f"a whole number{_unit(unit)} from {minimum} to {maximum}"
    if not WHOLE_NUMBER.fullmatch(value):
        raise ImproperlyConfigured(f"{name} must be {allowed}, not {value!r}")
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(f"{name} must be {allowed}, not {value!r}")
    return number


def decimal_number(
    name: str,
    default: float,
    *,
    minimum: float,
    minimum_allowed: bool = True,
    maximum: float | None = None,
    unit: str = "",
    environ: Mapping[str, str] | None = None,
) -> float:
    """A finite number (1.5, 2, 1e3) of at least ``minimum``, or greater than
    it when not ``minimum_allowed``, and at most ``maximum``; ``default`` when unset."""
    value = _given(name, environ)
    if value is None:
        return default
    lower = f", {minimum:g} or more" if minimum_allowed else f" greater than {minimum:g}"
    upper = f" and at most {maximum:g}" if maximum is not None else ""
    allowed = f"a number{_unit(unit)}{lower}{upper}"
    if not DECIMAL_NUMBER.fullmatch(value):
        raise ImproperlyConfigured(f"{name} must be {allowed}, not {value!r}")
    number = float(value)
    too_low = number < minimum if minimum_allowed else number <= minimum
    # 1e999 reads as infinity.
    if not math.isfinite(number) or too_low or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(f"{name} must be {allowed}, not {value!r}")
    return number


def boolean(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    """1/0, true/false, yes/no or on/off, in any case; ``default`` when unset."""
    value = _given(name, environ)
    if value is None:
        return default
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), not {value!r}")


def log_level(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str:
    """A standard logging level name in any case, returned in upper case
    (logging's dictConfig knows only "INFO", not "info")."""
    value = _given(name, environ)
    if value is None:
        return default
    if value.upper() not in LOG_LEVELS:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(LOG_LEVELS)} (in any case), not {value!r}")
    return value.upper()
