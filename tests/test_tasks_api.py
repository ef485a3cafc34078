"""The task and workload endpoints, OpenAPI and health (DESIGN.md §4)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from pydantic import BaseModel, ConfigDict
from rest_framework.test import APIClient

from live.models import Event
from workloads.models import Task
from workloads.registry import Run, unregister, workload

from .test_auth_api import assert_error

pytestmark = pytest.mark.django_db


def queue(client: APIClient, kind: str = "simulate", **params: object):
    return client.post("/api/tasks/", {"kind": kind, "params": params}, format="json")


def test_queueing_answers_202_with_the_task_and_its_location(alice_api: APIClient, alice: User) -> None:
    response = queue(alice_api, seconds=1)
    assert response.status_code == 202
    task = response.json()
    assert set(task) == {
        "id",
        "kind",
        "params",
        "status",
        "progress",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    }
    assert task["status"] == "queued"
    assert task["params"] == {"seconds": 1.0, "fail": False}
    assert response["Location"] == f"/api/tasks/{task['id']}/"
    stored = Task.objects.get(pk=task["id"])
    assert stored.owner == alice
    assert alice_api.get(response["Location"]).json() == task


def test_queueing_records_a_queued_event_for_the_owner(alice_api: APIClient, alice: User) -> None:
    task = queue(alice_api).json()
    event = Event.objects.get(user=alice)
    assert (event.sequence, event.kind, event.task["id"]) == (1, "task.queued", task["id"])


def test_queueing_fills_in_default_parameters(alice_api: APIClient) -> None:
    response = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json")
    assert response.status_code == 202
    assert response.json()["params"] == {"seconds": 2.0, "fail": False}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "mine_bitcoin", "params": {}}, "kind"),
        ({"params": {}}, "kind"),
        ({"kind": "simulate", "params": {"seconds": -1}}, "params.seconds"),
        ({"kind": "simulate", "params": {"seconds": "soon"}}, "params.seconds"),
        ({"kind": "simulate", "params": {"seconds": 3601}}, "params.seconds"),
        ({"kind": "simulate", "params": {"fail": "yes"}}, "params.fail"),
        ({"kind": "simulate", "params": {"sleep": 1}}, "params.sleep"),
        ({"kind": "simulate", "params": [1, 2]}, "params"),
        ({"kind": "primes", "params": {"below": 1}}, "params.below"),
        ({"kind": "primes", "params": {"below": 100_000_001}}, "params.below"),
        ({"kind": "primes", "params": {"below": 10.5}}, "params.below"),
        ({"kind": "text_stats", "params": {}}, "params.text"),
        ({"kind": "text_stats", "params": {"text": 42}}, "params.text"),
        ({"kind": "text_stats", "params": {"text": "x" * (1024 * 1024 + 1)}}, "params.text"),
        # A number, as the schema says: not a bool, not a numeric string.
        ({"kind": "simulate", "params": {"seconds": True}}, "params.seconds"),
        ({"kind": "simulate", "params": {"seconds": "5"}}, "params.seconds"),
    ],
)
def test_bad_input_is_a_400_with_field_errors_and_stores_nothing(alice_api: APIClient, body: dict, field: str) -> None:
    error = assert_error(alice_api.post("/api/tasks/", body, format="json"), 400, "invalid")
    assert field in error["fields"], error
    assert not Task.objects.exists()
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "text",
    [
        r"a\u0000b",  # PostgreSQL's jsonb refuses it: was a 500
        r"\ud800",  # unpaired: SQLite stored it, then every list of the user's tasks was a 500
        r"\udc00 and \ud83d\ude00",  # a pair is fine, a lone low one is not
    ],
)
def test_text_that_cannot_be_stored_is_a_400(alice_api: APIClient, text: str) -> None:
    body = json.dumps({"kind": "text_stats", "params": {"text": "TEXT"}}).replace("TEXT", text)
    error = assert_error(alice_api.post("/api/tasks/", body, content_type="application/json"), 400, "invalid")
    assert error["fields"] == {"params.text": ["Must be text without NUL characters or unpaired surrogates."]}
    assert not Task.objects.exists()
    assert alice_api.get("/api/tasks/").status_code == 200


def test_a_workloads_own_check_reads_as_it_wrote_it(alice_api: APIClient) -> None:
    error = assert_error(queue(alice_api, "text_stats", text="x" * (1024 * 1024 + 1)), 400, "invalid")
    assert error["fields"] == {"params.text": ["The text is longer than 1048576 bytes of UTF-8."]}  # no "Value error, "


def test_text_with_a_surrogate_pair_is_stored(alice_api: APIClient) -> None:
    body = r'{"kind": "text_stats", "params": {"text": "smile \ud83d\ude00"}}'
    response = alice_api.post("/api/tasks/", body, content_type="application/json")
    assert response.status_code == 202, response.content
    assert response.json()["params"] == {"text": "smile \U0001f600"}


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"simulate"', "null"])
def test_a_body_that_is_not_a_json_object_is_a_400(alice_api: APIClient, body: str) -> None:
    response = alice_api.post("/api/tasks/", body, content_type="application/json")
    assert_error(response, 400)
    assert not Task.objects.exists()


def test_a_body_over_the_limit_is_a_413(alice_api: APIClient, settings) -> None:
    settings.API_MAX_BODY_BYTES = 1000
    response = queue(alice_api, "text_stats", text="x" * 2000)
    assert_error(response, 413, "too_large")
    assert not Task.objects.exists()


def test_anonymous_clients_cannot_queue_or_list(anonymous: APIClient) -> None:
    assert_error(queue(anonymous), 401)
    assert_error(anonymous.get("/api/tasks/"), 401)
    assert not Task.objects.exists()


def test_a_session_post_without_csrf_is_refused(alice: User) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    assert_error(queue(client), 403)
    assert not Task.objects.exists()


def test_the_list_is_newest_first_and_paginated(alice_api: APIClient) -> None:
    ids = [queue(alice_api, seconds=n).json()["id"] for n in range(5)]
    first = alice_api.get("/api/tasks/?limit=2").json()
    assert set(first) == {"results", "next"}
    assert [task["id"] for task in first["results"]] == ids[::-1][:2]
    second = alice_api.get(first["next"]).json()
    third = alice_api.get(second["next"]).json()
    assert [task["id"] for task in second["results"] + third["results"]] == ids[::-1][2:]
    assert third["next"] is None


def test_the_list_shows_each_task_as_its_own_page_does(alice_api: APIClient, alice: User) -> None:
    """The list reads rows, not model instances (workloads/api.py): every
    field, in every state, as the task's own URL and its events show it."""
    from workloads import services

    queued = queue(alice_api, seconds=1).json()
    started = services.start_task(task_id=queue(alice_api, seconds=2).json()["id"], redelivered=False)
    assert started is not None
    services.report_progress(task=started, percent=40)
    succeeded = services.start_task(task_id=queue(alice_api, seconds=3).json()["id"], redelivered=False)
    assert succeeded is not None
    services.finish_task(task_id=succeeded.id, result={"count": 7, "unicode": "é"}, running=succeeded)
    failed = services.start_task(task_id=queue(alice_api, seconds=4).json()["id"], redelivered=False)
    assert failed is not None
    services.fail_task(task_id=failed.id, error="It broke.", running=failed)
    listed = alice_api.get("/api/tasks/").json()["results"]
    assert [task["status"] for task in listed] == ["failed", "succeeded", "running", "queued"]
    for task in listed:
        assert task == alice_api.get(f"/api/tasks/{task['id']}/").json()
        assert task == Task.objects.get(pk=task["id"]).as_json()
    assert listed[-1] == queued
    assert listed[1]["result"] == {"count": 7, "unicode": "é"} and listed[1]["progress"] == 100
    assert listed[0]["error"] == "It broke." and listed[2]["progress"] == 40


# int() would take the last three (10, 7, and Arabic-Indic 10).
@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=ten", "cursor=garbage", "limit=1_0", "limit=%207", "limit=%D9%A1%D9%A0"]
)
def test_bad_paging_is_a_400(alice_api: APIClient, query: str) -> None:
    assert_error(alice_api.get(f"/api/tasks/?{query}"), 400, "invalid")
    if query.startswith("limit="):  # the events' list reads it the same way
        assert_error(alice_api.get(f"/api/events/?{query}"), 400, "invalid")


@pytest.mark.parametrize("after", ["-1", "x", "1.0", "1_0", "%201", "%D9%A1"])
def test_a_bad_after_is_a_400(alice_api: APIClient, after: str) -> None:
    error = assert_error(alice_api.get(f"/api/events/?after={after}"), 400, "invalid")
    assert "after" in error["fields"]


def test_the_list_shows_only_the_users_own_tasks(alice_api: APIClient, bob_api: APIClient) -> None:
    queue(alice_api)
    bobs = queue(bob_api).json()
    assert [task["id"] for task in bob_api.get("/api/tasks/").json()["results"]] == [bobs["id"]]


def test_another_users_task_is_a_404_not_a_403(alice_api: APIClient, bob_api: APIClient) -> None:
    location = queue(alice_api)["Location"]
    assert_error(bob_api.get(location), 404, "not_found")
    assert_error(bob_api.get(f"/api/tasks/{uuid.uuid4()}/"), 404, "not_found")
    assert_error(bob_api.get("/api/tasks/not-a-uuid/"), 404, "not_found")


def test_workloads_are_listed_with_their_json_schemas(anonymous: APIClient) -> None:
    workloads = {w["name"]: w for w in anonymous.get("/api/workloads/").json()}
    assert {"simulate", "primes", "text_stats"} <= set(workloads)
    simulate = workloads["simulate"]
    assert simulate["title"] and simulate["description"]
    assert simulate["params"]["properties"]["seconds"]["maximum"] == 3600
    assert simulate["params"]["properties"]["fail"]["type"] == "boolean"
    assert workloads["primes"]["params"]["properties"]["below"]["type"] == "integer"
    assert workloads["text_stats"]["params"]["required"] == ["text"]


def test_events_after_a_cursor_are_listed_oldest_first(alice_api: APIClient, bob_api: APIClient) -> None:
    first, second = queue(alice_api).json(), queue(alice_api).json()
    queue(bob_api)
    events = alice_api.get("/api/events/?after=0").json()
    assert [(e["id"], e["event"], e["task"]["id"]) for e in events["results"]] == [
        (1, "task.queued", first["id"]),
        (2, "task.queued", second["id"]),
    ]
    assert events["next"] is None
    assert [e["id"] for e in alice_api.get("/api/events/?after=1").json()["results"]] == [2]
    assert_error(alice_api.get("/api/events/?after=-1"), 400, "invalid")


def test_openapi_schema_and_docs_are_served(anonymous: APIClient) -> None:
    schema = anonymous.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ["/api/tasks/", "/api/tasks/{task_id}/", "/api/workloads/", "/api/auth/signup/", "/api/events/"]:
        assert path in paths
    docs = anonymous.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()
    # DRF's OPTIONS metadata has no renderer there: a 500 on the docs page.
    for path in ("/api/docs/", "/api/schema/"):
        assert anonymous.options(path).status_code == 405
        assert anonymous.head(path).status_code == 200


def test_healthz_says_the_process_is_alive(anonymous: APIClient) -> None:
    response = anonymous.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_unknown_api_paths_answer_json_404(anonymous: APIClient) -> None:
    assert_error(anonymous.get("/api/nothing-here/"), 404, "not_found")


def test_a_path_without_its_trailing_slash_is_served_not_redirected(alice_api: APIClient) -> None:
    """APPEND_SLASH answered a POST with a 301 that clients follow as a GET:
    the list, a 200, and no task queued (with DEBUG on, a 500)."""
    response = alice_api.post("/api/tasks", {"kind": "simulate", "params": {}}, format="json")
    assert response.status_code == 202, response.content
    task_id = response.json()["id"]
    assert Task.objects.filter(pk=task_id).exists()
    assert alice_api.post(f"/api/tasks/{task_id}/cancel").status_code == 202
    assert alice_api.get(f"/api/tasks/{task_id}").json()["status"] == "cancelled"
    assert_error(alice_api.post("/api/nothing-here"), 404, "not_found")


def test_a_task_id_in_upper_case_is_the_same_task(alice_api: APIClient) -> None:
    task_id = queue(alice_api).json()["id"]
    response = alice_api.get(f"/api/tasks/{task_id.upper()}/")
    assert response.status_code == 200
    assert response.json()["id"] == task_id


@pytest.mark.parametrize(
    "position",
    [
        "p=garbage",
        "p=2026-13-45T00:00:00Z",
        "r=1&p=x",
        "o=5&p=12",
        # Offsets Python takes and PostgreSQL does not: a 500 before.
        "p=2026-01-01T00:00:00-16:00",
        "p=2026-01-01T00:00:00%2B23:59",
    ],
)
def test_a_forged_cursor_is_a_400(alice_api: APIClient, position: str) -> None:
    queue(alice_api)
    cursor = base64.b64encode(position.encode()).decode()
    error = assert_error(alice_api.get("/api/tasks/", {"cursor": cursor}), 400, "invalid")
    assert error["fields"] == {"cursor": ["The cursor is not valid."]}


def test_a_cursor_at_the_largest_offset_postgresql_takes_is_served(alice_api: APIClient) -> None:
    queue(alice_api)
    cursor = base64.b64encode(b"p=2026-01-01T00:00:00-15:59").decode()
    assert alice_api.get("/api/tasks/", {"cursor": cursor}).status_code == 200


def test_a_body_nested_too_deeply_is_a_400(alice_api: APIClient) -> None:
    body = '{"kind": "simulate", "params": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_error(alice_api.post("/api/tasks/", body, content_type="application/json"), 400, "parse_error")
    assert not Task.objects.exists()


class AnyJsonParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any] = {}
    value: Any = None


@pytest.fixture
def any_json() -> Iterator[str]:
    """A workload whose parameters take any JSON: an object, and any value."""

    @workload()
    def any_json(params: AnyJsonParams, run: Run) -> None:
        return None

    yield "any_json"
    unregister("any_json")


def nested(levels: int) -> str:
    """JSON arrays nested ``levels`` deep."""
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [100, 300, 1000, 9000])
@pytest.mark.parametrize("field", ["data", "value"])
def test_parameters_nested_more_than_100_levels_deep_are_a_400(
    alice_api: APIClient, any_json: str, field: str, levels: int
) -> None:
    # Before: from ~250 levels a 500 (pydantic's "Maximum serialization
    # depth exceeded"), and below it a task that every answer and event holding
    # it nested past what some clients' JSON parsers take (128 levels).
    inner = nested(levels) if field == "value" else '{"x": ' + nested(levels - 1) + "}"
    body = f'{{"kind": "{any_json}", "params": {{"{field}": {inner}}}}}'
    error = assert_error(alice_api.post("/api/tasks/", body, content_type="application/json"), 400, "invalid")
    assert error["fields"] == {f"params.{field}": ["Nested too deeply: parameters nest at most 100 levels deep."]}
    assert not Task.objects.exists()


def test_parameters_nested_100_levels_deep_are_stored(alice_api: APIClient, any_json: str) -> None:
    params = json.loads(nested(99))  # inside the params object: 100 levels
    response = alice_api.post("/api/tasks/", {"kind": any_json, "params": {"value": params}}, format="json")
    assert response.status_code == 202, response.content
    assert Task.objects.get().params == {"data": {}, "value": params}


@pytest.mark.parametrize(
    ("params", "field"),
    [({"value": 2**64}, "params.value"), ({"data": {"x": [1, -(2**63) - 1]}}, "params.data.x.1")],
)
def test_an_integer_past_64_bits_in_the_parameters_is_a_400(
    alice_api: APIClient, any_json: str, params: dict, field: str
) -> None:
    # Before, stored: then none of the task's events could be pushed live
    # (channels_redis' msgpack raised OverflowError), each reached its owner's
    # sockets only at their next ping.
    error = assert_error(alice_api.post("/api/tasks/", {"kind": any_json, "params": params}, format="json"), 400)
    assert error["fields"] == {
        field: [
            "Must be an integer from -9223372036854775808 to 18446744073709551615 (64 bits); send a larger one as text."
        ]
    }
    assert not Task.objects.exists()


def test_integers_of_64_bits_in_the_parameters_are_stored(alice_api: APIClient, any_json: str) -> None:
    params = {"data": {"least": -(2**63), "most": 2**64 - 1}, "value": None}
    response = alice_api.post("/api/tasks/", {"kind": any_json, "params": params}, format="json")
    assert response.status_code == 202, response.content
    assert Task.objects.get().params == params


def test_a_body_that_is_not_json_is_a_400(alice_api: APIClient) -> None:
    response = alice_api.post("/api/tasks/", "kind=simulate", content_type="application/x-www-form-urlencoded")
    assert_error(response, 400, "unsupported_media_type")
    assert not Task.objects.exists()


def test_an_unknown_api_path_is_a_json_404_with_debug_on_too(alice_api: APIClient, settings) -> None:
    """make run has DEBUG on: Django then answers a path it cannot resolve
    with its HTML page, whatever handler404 says."""
    settings.DEBUG = True
    assert_error(alice_api.get("/api/nope/"), 404, "not_found")
    assert_error(alice_api.get("/api/tasks/not-a-uuid/"), 404, "not_found")
    assert alice_api.get("/nope/")["Content-Type"].startswith("text/html")  # pages keep it


def test_a_queued_task_has_made_no_progress_yet(alice_api: APIClient) -> None:
    """progress is 0-100 (DESIGN.md §4), never null: 0 until it starts."""
    task = queue(alice_api, seconds=1).json()
    assert task["progress"] == 0
    assert alice_api.get(f"/api/tasks/{task['id']}/").json()["progress"] == 0
    assert alice_api.get("/api/tasks/").json()["results"][0]["progress"] == 0
