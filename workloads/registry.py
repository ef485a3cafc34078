"""The workload registry: a workload is one decorated function.

    class SleepParams(BaseModel):
        seconds: float = Field(1, ge=0)

    @workload(title="Sleep", soft_time_limit=120, time_limit=150)
    def sleep(params: SleepParams, run: Run) -> dict:
        ...
        run.progress(done, total)     # coalesced; call it as often as you like
        run.stop_if_cancelled()       # raises Cancelled once a cancel arrived
        return {"slept": params.seconds}

The parameter model (pydantic) gives validation with per-field errors and the
JSON Schema that GET /api/workloads/ shows and the home page's form is built
from; the return value (JSON) is the task's result.
"""

from __future__ import annotations

import decimal
import inspect
import math
import numbers
import reprlib
import threading
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, AliasPath, BaseModel, PydanticUserError, ValidationError


class UnknownWorkload(LookupError):
    pass


class InvalidParams(ValueError):
    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("invalid parameters")
        self.fields = fields


class WorkloadFailed(Exception):
    """Raised by a workload to fail its task with a message meant for the user."""


class Cancelled(Exception):
    """Raised by ``Run.stop_if_cancelled`` once the task's owner cancelled it."""


# Progress reaches the database and the sockets at most this often per task,
# however often a workload reports it (a change of at least one percent too),
# and not before the run is this old: a task that ends sooner sends no
# progress frame at all, its terminal event says it all. Every frame carries
# the whole task, parameters included: for a 1 MiB text_stats (~0.2 s) the one
# frame of 50 % was a quarter of the bytes on each socket (docs/benchmarks.md,
# "Large tasks").
PROGRESS_MIN_INTERVAL_SECONDS = 0.25


class Run:
    """What a running workload is handed: a progress report that coalesces,
    and a cancellation check that costs nothing (the worker's watchdog sets it)."""

    def __init__(self, on_progress: Callable[[int], None] | None = None, cancel: threading.Event | None = None) -> None:
        self._on_progress = on_progress
        self._cancel = cancel or threading.Event()
        self._last_percent: int | None = None
        self._last_sent_at = time.monotonic()
        # Whether the workload was told of the cancel: then it stopped for it,
        # whether it raised or returned, and its task ends cancelled.
        self.saw_cancel = False

    def progress(self, done: float, total: float = 100) -> None:
        """Reports ``done`` of ``total`` (percent by default). A value outside
        0 to 100 % counts as 0 or 100, and a ``total`` of 0 as 0 %; anything but
        a finite real number (None, a string, a bool, NaN, infinity) raises
        TypeError or ValueError naming it, which fails the task as a crash."""
        percent = _percent(done, total)
        now = time.monotonic()
        if percent == self._last_percent or now - self._last_sent_at < PROGRESS_MIN_INTERVAL_SECONDS:
            return
        self._last_percent, self._last_sent_at = percent, now
        if self._on_progress is not None:
            self._on_progress(percent)

    def cancelled(self) -> bool:
        """True once the owner asked to cancel: stop soon, return or raise
        (the task ends cancelled either way, its result dropped)."""
        if self._cancel.is_set():
            self.saw_cancel = True
            return True
        return False

    def stop_if_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled


def _percent(done: Any, total: Any) -> int:
    # Both are checked before any arithmetic: 100 * "50" was a string a
    # hundred times as long (a gigabyte for a 10 MB one), and int(NaN) failed
    # the task with "cannot convert float NaN to integer", naming neither the
    # call nor the value.
    done, total = _finite_number("done", done), _finite_number("total", total)
    if not total:
        return 0
    percent = 100 * done / total
    return 0 if percent <= 0 else 100 if percent >= 100 else int(percent)


def _finite_number(name: str, value: Any) -> float:
    # float and int first, without the numbers ABCs' isinstance (~0.3 µs):
    # a workload may report from its innermost loop.
    if type(value) is not float and type(value) is not int and not _number(value):
        raise TypeError(f"run.progress() takes numbers: {name} is {reprlib.repr(value)} ({type(value).__name__})")
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an int past a float's range, Decimal("sNaN")
        number = math.nan
    if number - number != 0:  # NaN or infinity: math.isfinite, without the call
        raise ValueError(f"run.progress() takes finite numbers: {name} is {reprlib.repr(value)}")
    return number


def _number(value: Any) -> bool:
    """A real number other than a bool: a Fraction, a Decimal, NumPy's."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real | decimal.Decimal)


WorkloadFunction = Callable[[Any, Run], Any]


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    description: str
    params_model: type[BaseModel]
    function: WorkloadFunction
    # Seconds; None means the deployment's TASK_SOFT_TIME_LIMIT / TASK_TIME_LIMIT.
    # The soft limit fails the task with a readable error; the hard one kills
    # the worker process running it, for code that ignores the soft one.
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def parse(self, raw: Any) -> BaseModel:
        if not isinstance(raw, dict):
            raise InvalidParams({"params": ["Must be a JSON object."]})
        try:
            return self.params_model.model_validate(raw)
        except ValidationError as exc:
            fields: dict[str, list[str]] = {}
            for error in exc.errors(include_url=False):
                where = ".".join(str(part) for part in error["loc"]) or "params"
                # A validator's own ValueError comes as "Value error, <its message>".
                fields.setdefault(where, []).append(error["msg"].removeprefix("Value error, "))
            raise InvalidParams(fields) from None

    def normalise(self, raw: Any) -> dict[str, Any]:
        """The parameters as stored: validated, with defaults filled in,
        nested at most MAX_PARAMS_DEPTH levels, every string storable (no NUL,
        no unpaired surrogate) and every integer within 64 bits. A field's
        ``alias=`` names it here as in the schema and the request: the worker
        parses these again."""
        if isinstance(raw, dict):
            too_deep = [key for key, value in raw.items() if nested_deeper_than(value, MAX_PARAMS_DEPTH - 1)]
            if too_deep:
                raise InvalidParams({str(key): [TOO_DEEP] for key in too_deep})
        params = self.parse(raw).model_dump(mode="json", by_alias=True)
        fields: dict[str, list[str]] = {}
        for where, why in unfit_values(params, ""):
            fields.setdefault(where, []).append(why)
        if fields:
            raise InvalidParams(fields)
        return params

    def run(self, params: dict[str, Any], run: Run) -> Any:
        return self.function(self.parse(params), run)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "params": self.params_model.model_json_schema(),
        }


# Parameters nest at most this deep (their object is the first level), as a
# result does (services.MAX_RESULT_DEPTH): every answer and event that holds
# the task holds them, a client's JSON parser may stop at 128 levels
# (serde_json's default), and pydantic's serializer stops at ~250 (the task
# was a 500: "Maximum serialization depth exceeded"). Checked before
# validation, without recursion.
MAX_PARAMS_DEPTH = 100
TOO_DEEP = f"Nested too deeply: parameters nest at most {MAX_PARAMS_DEPTH} levels deep."

# JSON may spell both ("\u0000", "\ud800"); PostgreSQL refuses the first in
# jsonb, and the second, which SQLite stores, cannot be written out as UTF-8
# again: every later answer that holds the task would fail.
UNSTORABLE_TEXT = "Must be text without NUL characters or unpaired surrogates."


def nested_deeper_than(value: Any, levels: int) -> bool:
    """Whether the arrays and objects (lists, tuples, dicts) in ``value``
    nest more than ``levels`` deep; without recursion, a level at a time."""
    containers = [value] if isinstance(value, dict | list | tuple) else []
    for _ in range(levels):
        containers = [
            item
            for container in containers
            for item in (container.values() if isinstance(container, dict) else container)
            if isinstance(item, dict | list | tuple)
        ]
        if not containers:
            return False
    return bool(containers)


# The integers a task's parameters and result may hold: those the channel
# layer carries. channels_redis packs each live event with msgpack, which
# takes -2**63 to 2**64 - 1 and raises OverflowError past them: the event
# was stored, but its push failed ("could not publish"), and it reached a
# socket only at the socket's next ping or event. A JavaScript client reads
# no integer past 2**53 exactly anyway: such values belong in strings.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**64 - 1
INTEGER_PAST_64_BITS = f"Must be an integer from {MIN_INTEGER} to {MAX_INTEGER} (64 bits); send a larger one as text."


def unfit_values(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """The paths of the values in ``value`` (keys too) that a task cannot
    hold, each with why: a string PostgreSQL cannot store (UNSTORABLE_TEXT),
    an integer past 64 bits (INTEGER_PAST_64_BITS; a key too: json.dumps
    writes it as text, msgpack as an integer). Named as parse() names fields
    ("" for the whole, which is "params"). One walk for both."""
    if isinstance(value, str):
        if not storable(value):
            yield where or "params", UNSTORABLE_TEXT
    elif isinstance(value, int):
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            yield where or "params", INTEGER_PAST_64_BITS
    elif isinstance(value, dict | list | tuple):  # json.dumps writes a tuple as an array
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            inner = f"{where}.{key}" if where else str(key)
            if isinstance(value, dict):
                yield from unfit_values(key, inner)
            yield from unfit_values(item, inner)


def storable(text: str) -> bool:
    """Whether PostgreSQL stores ``text``: no NUL, no unpaired surrogate
    (which UTF-8 cannot encode)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_registry: dict[str, Workload] = {}


# A task stores its workload's name in a column of this length (Task.kind).
MAX_NAME_LENGTH = 64


def workload(
    *,
    name: str | None = None,
    title: str | None = None,
    description: str | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
) -> Callable[[WorkloadFunction], WorkloadFunction]:
    """Registers a function as a workload; its first parameter's annotation is
    the pydantic model of its parameters.

    Every mistake it can see is raised here, when the module is imported (so
    every web and worker process refuses to start), not when a client first
    lists the workloads or a worker first runs one."""

    def register(function: WorkloadFunction) -> WorkloadFunction:
        key = name or function.__name__
        where = f"workload {key!r} ({function.__module__}.{function.__qualname__})"
        params_model = _params_model(function, where)
        if not 1 <= len(key) <= MAX_NAME_LENGTH:
            raise ValueError(f"{where}: a workload's name is 1 to {MAX_NAME_LENGTH} characters long")
        _check_time_limits(soft_time_limit, time_limit, where)
        try:
            params_model.model_json_schema()
        except PydanticUserError as exc:
            raise TypeError(
                f"{where}: its parameters have no JSON Schema, which the API and the form need: {exc}"
            ) from exc
        _check_aliases(params_model, where, prefix="", seen=set())
        if key in _registry and _registry[key].function is not function:
            existing = _registry[key].function
            raise ValueError(
                f"{where}: a workload named {key!r} is already registered "
                f"({existing.__module__}.{existing.__qualname__}); give this one another name="
            )
        doc = inspect.getdoc(function) or ""
        _registry[key] = Workload(
            name=key,
            title=title or key.replace("_", " ").capitalize(),
            description=description or doc.split("\n\n")[0].replace("\n", " "),
            params_model=params_model,
            function=function,
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
        )
        return function

    return register


def _params_model(function: WorkloadFunction, where: str) -> type[BaseModel]:
    """The pydantic model that annotates the function's first parameter,
    once it is clear that the worker can call ``function(params, run)``."""
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise TypeError(f"{where}: a workload is a plain function, not async: the worker calls it in a thread")
    signature = inspect.signature(function)
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(f"{where}: a workload takes two arguments, (params, run)") from None
    first = next(iter(signature.parameters))
    params_model = typing.get_type_hints(function).get(first)
    if not (inspect.isclass(params_model) and issubclass(params_model, BaseModel)):
        raise TypeError(f"{where}: annotate its first parameter, {first!r}, with a pydantic model")
    return params_model


def _check_aliases(model: type[BaseModel], where: str, *, prefix: str, seen: set[type[BaseModel]]) -> None:
    """Refuses a parameter (of the model or of a model nested in it) that the
    worker could not read back: a task stores its parameters as
    ``model_dump(by_alias=True)`` writes them, under each field's
    serialization alias (``alias=``'s, else the field's name), and the worker
    parses them again, under its validation alias. A ``validation_alias=``
    alone made the worker miss the value: the task crashed (extra="forbid")
    or, worse, ran with the default."""
    if model in seen:
        return
    seen.add(model)
    config = model.model_config
    by_name = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    by_alias = config.get("validate_by_alias", True)
    for name, field in model.model_fields.items():
        stored = field.serialization_alias or field.alias or name
        validation_alias = field.validation_alias if field.validation_alias is not None else field.alias
        read = _alias_keys(validation_alias) if by_alias and validation_alias is not None else {name}
        if by_name:
            read.add(name)
        if stored not in read:
            raise TypeError(
                f"{where}: parameter {prefix + name!r} is stored as {stored!r} and read back as "
                f"{' or '.join(map(repr, sorted(read))) or 'nothing'}: the worker would not find its value. "
                "Name a parameter with alias= alone, without validation_alias= or serialization_alias="
            )
        for nested in _models_in(field.annotation):
            _check_aliases(nested, where, prefix=f"{prefix}{name}.", seen=seen)


def _alias_keys(alias: str | AliasPath | AliasChoices) -> set[str]:
    """The top-level keys a validation alias reads a value from."""
    if isinstance(alias, str):
        return {alias}
    if isinstance(alias, AliasPath):
        return {alias.path[0]} if len(alias.path) == 1 and isinstance(alias.path[0], str) else set()
    return set().union(*(_alias_keys(choice) for choice in alias.choices))


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models in a field's type: ``Window``, ``list[Window]``, ``Window | None``…"""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


def _check_time_limits(soft: float | None, hard: float | None, where: str) -> None:
    for label, limit in (("soft_time_limit", soft), ("time_limit", hard)):
        if limit is not None and not (isinstance(limit, int | float) and 0 < limit < math.inf):
            raise ValueError(f"{where}: {label} is a number of seconds above 0, not {limit!r}")
    if soft is None and hard is None:
        return
    # A limit not given is the deployment's (services.send_to_broker).
    from django.conf import settings

    soft_label = "soft_time_limit" if soft is not None else "TASK_SOFT_TIME_LIMIT"
    hard_label = "time_limit" if hard is not None else "TASK_TIME_LIMIT"
    soft = soft if soft is not None else settings.TASK_SOFT_TIME_LIMIT
    hard = hard if hard is not None else settings.TASK_TIME_LIMIT
    if soft >= hard:
        raise ValueError(
            f"{where}: {soft_label} ({soft:g} s) must be below {hard_label} ({hard:g} s), or it never strikes"
        )


def get_workload(name: Any) -> Workload:
    if not isinstance(name, str) or name not in _registry:
        raise UnknownWorkload(name)
    return _registry[name]


def all_workloads() -> list[Workload]:
    return list(_registry.values())


def unregister(name: str) -> None:
    """For tests that register a workload of their own."""
    _registry.pop(name, None)
