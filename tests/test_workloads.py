"""The shipped workloads, called directly (they are plain functions), and the
registry's checks of a workload as it is registered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any

import pytest
from django.conf import settings
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from workloads.builtin import PrimesParams, SimulateParams, TextStatsParams, primes, simulate, text_stats
from workloads.registry import (
    InvalidParams,
    Run,
    WorkloadFailed,
    all_workloads,
    get_workload,
    unregister,
    workload,
)


def naive_prime_count(below: int) -> int:
    return sum(1 for n in range(2, below) if all(n % d for d in range(2, int(n**0.5) + 1)))


def test_primes_below_100000_is_9592() -> None:
    assert primes(PrimesParams(below=100_000), Run()) == {"count": 9592}


@pytest.mark.parametrize("below", [2, 3, 4, 5, 10, 11, 100, 1_000, 7_919, 7_920, 65_537])
def test_primes_agrees_with_trial_division(below: int) -> None:
    assert primes(PrimesParams(below=below), Run()) == {"count": naive_prime_count(below)}


def test_primes_counts_across_sieve_segments() -> None:
    # pi(10^7) = 664579: several 1 Mi segments, and a short last one.
    assert primes(PrimesParams(below=10_000_000), Run()) == {"count": 664_579}


def test_primes_reports_progress_up_to_100(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every report that changes the percent gets through, however fast the machine sieves.
    monkeypatch.setattr("workloads.registry.PROGRESS_MIN_INTERVAL_SECONDS", 0)
    reported: list[int] = []
    primes(PrimesParams(below=5_000_000), Run(reported.append))
    assert reported and reported == sorted(reported)
    assert reported[0] < 100 or len(reported) == 1
    assert reported[-1] <= 100


def test_text_stats_counts_words_and_lines() -> None:
    text = "The cat sat.\nThe dog sat, the end.\n\nIt's done"
    result = text_stats(TextStatsParams(text=text), Run())
    assert result["words"] == 10  # "It's" is one word
    assert result["lines"] == 4
    assert result["top_words"][:2] == [["the", 3], ["sat", 2]]


def test_text_stats_keeps_ten_top_words_at_most() -> None:
    text = " ".join(f"w{n} " * (n + 1) for n in range(15))
    top = text_stats(TextStatsParams(text=text), Run())["top_words"]
    assert len(top) == 10
    assert top[0] == ["w14", 15]


def test_text_stats_of_an_empty_text() -> None:
    assert text_stats(TextStatsParams(text=""), Run()) == {"words": 0, "lines": 0, "top_words": []}


def test_simulate_fails_with_a_readable_error_when_told_to() -> None:
    with pytest.raises(WorkloadFailed, match="Simulated failure"):
        simulate(SimulateParams(seconds=0, fail=True), Run())


def test_simulate_returns_what_it_slept() -> None:
    assert simulate(SimulateParams(seconds=0.05), Run()) == {"slept": 0.05}


def test_progress_is_coalesced() -> None:
    reported: list[int] = []
    run = Run(reported.append)
    for done in range(1_000_000):
        run.progress(done, 1_000_000)
    # At most one report per 0.25 s, none in the first: a million calls are a handful.
    assert len(reported) < 20
    assert reported == sorted(set(reported))


@pytest.mark.parametrize(
    ("done", "total", "percent"),
    [(-1, 100, 0), (1.5, 100, 1), (150, 100, 100), (5, 0, 0), (Decimal("2.5"), 10, 25), (Fraction(1, 3), 1, 33)],
)
def test_progress_outside_0_to_100_percent_counts_as_0_or_100(
    monkeypatch: pytest.MonkeyPatch, done: Any, total: Any, percent: int
) -> None:
    monkeypatch.setattr("workloads.registry.PROGRESS_MIN_INTERVAL_SECONDS", 0)
    reported: list[int] = []
    Run(reported.append).progress(done, total)
    assert reported == [percent]


@pytest.mark.parametrize(
    ("done", "total", "error", "message"),
    [
        (float("nan"), 100, ValueError, "takes finite numbers: done is nan"),
        (float("inf"), 100, ValueError, "takes finite numbers: done is inf"),
        (50, float("-inf"), ValueError, "takes finite numbers: total is -inf"),
        (Decimal("NaN"), 100, ValueError, r"takes finite numbers: done is Decimal\('NaN'\)"),
        (10**400, 10**400, ValueError, "takes finite numbers: done is 1000"),
        ("50", 100, TypeError, r"takes numbers: done is '50' \(str\)"),
        # Before, 100 * text: a string a hundred times as long, then a TypeError.
        ("x" * 1_000_000, 100, TypeError, r"takes numbers: done is 'xxxxxxxxxxxx\.\.\.xxxxxxxxxxxxx' \(str\)"),
        (None, 100, TypeError, r"takes numbers: done is None \(NoneType\)"),
        (True, 100, TypeError, r"takes numbers: done is True \(bool\)"),
        (1, "2", TypeError, r"takes numbers: total is '2' \(str\)"),
    ],
    ids=["NaN", "inf", "total -inf", "Decimal NaN", "huge int", "str", "long str", "None", "bool", "str total"],
)
def test_progress_that_is_not_a_finite_number_raises_naming_it(
    monkeypatch: pytest.MonkeyPatch, done: Any, total: Any, error: type[Exception], message: str
) -> None:
    monkeypatch.setattr("workloads.registry.PROGRESS_MIN_INTERVAL_SECONDS", 0)
    reported: list[int] = []
    with pytest.raises(error, match=rf"^run\.progress\(\) {message}"):
        Run(reported.append).progress(done, total)
    assert reported == []


def test_params_are_validated_with_a_message_per_field() -> None:
    with pytest.raises(InvalidParams) as caught:
        get_workload("simulate").normalise({"seconds": -5, "fail": "maybe", "extra": 1})
    assert set(caught.value.fields) == {"seconds", "fail", "extra"}


# --- Registering a workload: every mistake shows at import, that is at start-up.


@pytest.fixture
def registering() -> Iterator[list[str]]:
    """Names registered by the test, unregistered after it."""
    names: list[str] = []
    yield names
    for name in names:
        unregister(name)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def test_a_name_longer_than_a_task_can_store_is_refused_at_registration(registering: list[str]) -> None:
    name = "n" * 65
    registering.append(name)
    with pytest.raises(ValueError, match="1 to 64 characters"):

        @workload(name=name)
        def too_long(params: NoParams, run: Run) -> dict[str, Any]:
            return {}


def test_a_name_taken_by_another_workload_is_refused_naming_both(registering: list[str]) -> None:
    with pytest.raises(ValueError, match=r"'primes' .*already registered \(workloads\.builtin\.primes\)"):

        @workload(name="primes")
        def my_primes(params: NoParams, run: Run) -> dict[str, Any]:
            return {}

    assert get_workload("primes").function is primes


def test_an_async_function_is_refused_at_registration(registering: list[str]) -> None:
    registering.append("asynchronous")
    with pytest.raises(TypeError, match="not async"):

        @workload()
        async def asynchronous(params: NoParams, run: Run) -> dict[str, Any]:
            return {}


def test_a_function_the_worker_cannot_call_with_params_and_run_is_refused(registering: list[str]) -> None:
    registering.extend(["no_arguments", "only_params"])
    with pytest.raises(TypeError, match=r"two arguments, \(params, run\)"):

        @workload()  # type: ignore[arg-type]  # mypy sees it too; the registry must at run time
        def no_arguments() -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match=r"two arguments, \(params, run\)"):

        @workload()  # type: ignore[arg-type]
        def only_params(params: NoParams) -> dict[str, Any]:
            return {}


def test_an_unannotated_first_parameter_is_refused_with_a_readable_error(registering: list[str]) -> None:
    registering.append("unannotated")
    with pytest.raises(TypeError, match="annotate its first parameter, 'params', with a pydantic model"):

        @workload()
        def unannotated(params, run: Run) -> dict[str, Any]:
            return {}


class EventParams(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    event: threading.Event | None = None


def test_parameters_without_a_json_schema_are_refused_at_registration(registering: list[str]) -> None:
    # Before, the workload registered, and GET /api/workloads/ and the home
    # page answered 500 from then on.
    registering.append("takes_an_event")
    with pytest.raises(TypeError, match="no JSON Schema"):

        @workload()
        def takes_an_event(params: EventParams, run: Run) -> dict[str, Any]:
            return {}

    assert "takes_an_event" not in {w.name for w in all_workloads()}


@pytest.mark.parametrize(
    ("soft", "hard", "message"),
    [
        (30, 10, r"soft_time_limit \(30 s\) must be below time_limit \(10 s\)"),
        (10, 10, "must be below time_limit"),
        (0, None, "above 0"),
        (None, -1, "above 0"),
    ],
)
def test_time_limits_that_cannot_work_are_refused(
    registering: list[str], soft: float | None, hard: float | None, message: str
) -> None:
    registering.append("limited")
    with pytest.raises(ValueError, match=message):

        @workload(soft_time_limit=soft, time_limit=hard)
        def limited(params: NoParams, run: Run) -> dict[str, Any]:
            return {}


class AliasedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    row_count: Annotated[int, Field(alias="rowCount", ge=1)] = 5


def test_a_field_alias_names_the_parameter_in_the_schema_the_stored_params_and_the_run(
    registering: list[str],
) -> None:
    # Before, the stored params used the field's name (row_count), which the
    # worker's parse refused: every such task crashed with InvalidParams.
    registering.append("aliased")

    @workload()
    def aliased(params: AliasedParams, run: Run) -> dict[str, Any]:
        return {"rows": params.row_count}

    described = get_workload("aliased")
    assert list(described.describe()["params"]["properties"]) == ["rowCount"]
    stored = described.normalise({"rowCount": 3})
    assert stored == {"rowCount": 3}
    assert described.run(stored, Run()) == {"rows": 3}
    assert described.run(described.normalise({}), Run()) == {"rows": 5}


class ValidationAliasParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    row_count: Annotated[int, Field(validation_alias="rowCount", ge=1)] = 5


class SerializationAliasParams(BaseModel):
    row_count: Annotated[int, Field(serialization_alias="rowCount", ge=1)] = 5


class NestedValidationAliasParams(BaseModel):
    windows: list[ValidationAliasParams] = []


class ReadsByNameParams(BaseModel):
    model_config = ConfigDict(validate_by_name=True)

    row_count: Annotated[int, Field(validation_alias="rowCount", ge=1)] = 5


class AliasAmongChoicesParams(BaseModel):
    row_count: Annotated[int, Field(alias="rowCount", validation_alias=AliasChoices("rowCount", "rows"), ge=1)] = 5


@pytest.mark.parametrize(
    ("params_model", "message"),
    [
        (ValidationAliasParams, r"parameter 'row_count' is stored as 'row_count' and read back as 'rowCount'"),
        (SerializationAliasParams, r"parameter 'row_count' is stored as 'rowCount' and read back as 'row_count'"),
        (NestedValidationAliasParams, r"parameter 'windows\.row_count' is stored as 'row_count'"),
    ],
    ids=["validation_alias alone", "serialization_alias alone", "in a nested model"],
)
def test_a_parameter_the_worker_could_not_read_back_is_refused_at_registration(
    registering: list[str], params_model: type[BaseModel], message: str
) -> None:
    # Before, a validation_alias= alone registered: the stored params held
    # row_count, which the worker's parse did not read, so the task crashed
    # ("InvalidParams: invalid parameters") or, without extra="forbid", ran
    # with the default instead of the value sent.
    registering.append("aliased")

    def aliased(params: Any, run: Run) -> dict[str, Any]:
        return {}

    aliased.__annotations__["params"] = params_model
    with pytest.raises(TypeError, match=rf"^workload 'aliased' \(.*\): {message}.* alias= alone"):
        workload()(aliased)
    assert "aliased" not in {w.name for w in all_workloads()}


@pytest.mark.parametrize("params_model", [ReadsByNameParams, AliasAmongChoicesParams, AliasedParams])
def test_aliases_the_worker_reads_back_are_accepted(registering: list[str], params_model: type[BaseModel]) -> None:
    registering.append("aliased")

    def aliased(params: Any, run: Run) -> dict[str, Any]:
        return {"rows": params.row_count}

    aliased.__annotations__["params"] = params_model
    workload()(aliased)
    registered = get_workload("aliased")
    assert registered.run(registered.normalise({"rowCount": 3}), Run()) == {"rows": 3}


def test_one_time_limit_alone_must_agree_with_the_deployments_other_one(registering: list[str]) -> None:
    registering.append("limited")
    hard, soft = settings.TASK_TIME_LIMIT, settings.TASK_SOFT_TIME_LIMIT
    with pytest.raises(
        ValueError, match=rf"soft_time_limit \({hard:g} s\) must be below TASK_TIME_LIMIT \({hard:g} s\)"
    ):

        @workload(name="limited", soft_time_limit=hard)
        def soft_limit_alone(params: NoParams, run: Run) -> dict[str, Any]:
            return {}

    with pytest.raises(
        ValueError, match=rf"TASK_SOFT_TIME_LIMIT \({soft:g} s\) must be below time_limit \({soft:g} s\)"
    ):

        @workload(name="limited", time_limit=soft)
        def hard_limit_alone(params: NoParams, run: Run) -> dict[str, Any]:
            return {}

    @workload(name="limited", soft_time_limit=hard - 1)
    def soft_limit_below(params: NoParams, run: Run) -> dict[str, Any]:
        return {}

    assert get_workload("limited").soft_time_limit == hard - 1
