"""The OpenAPI schema (/api/schema/) and its page (/api/docs/): true to what
the API answers, so that clients generated from it work."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from live.models import Event
from live.services import delete_expired_events
from tasklight import rate_limits

from .conftest import PASSWORD
from .test_auth_api import assert_error

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
def test_the_schema_and_docs_answer_another_method_with_a_json_405(
    anonymous: APIClient, path: str, method: str
) -> None:
    response = getattr(anonymous, method)(path)
    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("path", "accept", "status", "code"),
    [
        ("/api/schema/", "text/html", 406, "not_acceptable"),
        ("/api/schema/?format=xml", "*/*", 404, "not_found"),
        ("/api/docs/", "application/json", 406, "not_acceptable"),
        ("/api/docs/?format=json", "*/*", 404, "not_found"),
    ],
)
def test_the_schema_and_docs_answer_what_they_cannot_render_with_a_json_error(
    anonymous: APIClient, path: str, accept: str, status: int, code: str
) -> None:
    assert_error(anonymous.get(path, HTTP_ACCEPT=accept), status, code)


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_the_schema_and_docs_answer_a_bad_token_with_a_json_401(anonymous: APIClient, path: str) -> None:
    assert_error(anonymous.get(path, HTTP_AUTHORIZATION="Token not-a-token"), 401, "authentication_failed")


def test_the_schema_is_still_served_as_yaml_and_as_json(anonymous: APIClient) -> None:
    as_yaml = anonymous.get("/api/schema/")
    assert (as_yaml.status_code, as_yaml["Content-Type"]) == (200, "application/vnd.oai.openapi; charset=utf-8")
    schema = yaml.safe_load(as_yaml.content)
    assert schema["openapi"].startswith("3.")
    for as_json in (
        anonymous.get("/api/schema/?format=json"),
        anonymous.get("/api/schema/", HTTP_ACCEPT="application/json"),
    ):
        assert as_json.status_code == 200
        assert "json" in as_json["Content-Type"]
        assert as_json.json() == schema


def test_the_docs_page_is_still_html_with_its_inline_script_allowed(anonymous: APIClient) -> None:
    page = anonymous.get("/api/docs/", HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    assert (page.status_code, page["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert b"swagger-ui" in page.content
    assert "'unsafe-inline'" in page["Content-Security-Policy"]


# --- The schema is true to the answers -------------------------------------

CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The served schema (anonymous: no database query)."""
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def checked(schema: dict[str, Any]) -> Callable[..., Any]:
    """Checks an answer against what the schema documents for its operation,
    with schemathesis's own checks (the fuzz test's, on chosen requests): its
    status is listed, its content type, required headers and body match."""
    loaded = schemathesis.openapi.from_dict(schema)

    def check(path: str, method: str, response: Any) -> Any:
        request = response.wsgi_request
        answer = httpx.Response(
            response.status_code,
            headers=list(response.items()),
            content=response.content,
            request=httpx.Request(request.method, request.build_absolute_uri()),
        )
        answer.elapsed = timedelta(0)
        matched = request.resolver_match
        path_parameters = {name: str(value) for name, value in (matched.kwargs if matched else {}).items()}
        loaded[path][method].Case(path_parameters=path_parameters).validate_response(answer, checks=CHECKS)
        return response.json() if response.content else None

    return check


def operations(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for methods in schema["paths"].values() for op in methods.values()}


EVERYWHERE = {"400", "404", "406", "413", "503"}
SIGNED_IN = EVERYWHERE | {"401"}
STATE_CHANGE = SIGNED_IN | {"403"}


def test_the_schema_is_valid_openapi_generated_without_a_warning(tmp_path: Path) -> None:
    """drf-spectacular's own validation (the OpenAPI 3.0 JSON Schema), with
    its warnings (an unresolvable field, a name clash) taken as failures."""
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert yaml.safe_load((tmp_path / "schema.yaml").read_text())["paths"]


def test_every_operation_lists_the_statuses_it_answers_and_no_other(schema: dict[str, Any]) -> None:
    documented = {name: set(op["responses"]) for name, op in operations(schema).items()}
    assert documented == {
        "auth_signup_create": {"201", "429"} | EVERYWHERE,
        "auth_login_create": {"200", "429"} | EVERYWHERE,
        "auth_token_create": {"200", "429"} | EVERYWHERE,
        "auth_token_destroy": {"204"} | STATE_CHANGE,
        "auth_logout_create": {"204"} | STATE_CHANGE,
        "auth_me_retrieve": {"200"} | SIGNED_IN,
        "workloads_list": {"200"} | SIGNED_IN,
        "tasks_list": {"200"} | SIGNED_IN,
        "tasks_create": {"202", "422", "429"} | STATE_CHANGE,
        "tasks_retrieve": {"200"} | SIGNED_IN,
        "tasks_cancel_create": {"202", "409"} | STATE_CHANGE,
        "tasks_retry_create": {"202", "409", "429"} | STATE_CHANGE,
        "events_retrieve": {"200", "410"} | SIGNED_IN,
        "notifications_retrieve": {"200"} | SIGNED_IN,
        "notifications_read_create": {"200"} | STATE_CHANGE,
    }
    for op in operations(schema).values():
        for status, response in op["responses"].items():
            if status >= "400":
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if status in ("429", "503"):
                assert response["headers"]["Retry-After"]["schema"]["type"] == "integer"


def test_queueing_documents_its_location_header(schema: dict[str, Any]) -> None:
    for name in ("tasks_create", "tasks_retry_create"):
        assert operations(schema)[name]["responses"]["202"]["headers"]["Location"]["required"] is True


def test_a_tasks_params_is_documented_as_a_json_object_never_null(
    schema: dict[str, Any], alice_api: APIClient, checked: Callable[..., Any]
) -> None:
    params = schema["components"]["schemas"]["NewTaskRequest"]["properties"]["params"]
    assert params["type"] == "object"
    assert not params.get("nullable")
    sent: object
    for sent in (None, [], "x"):
        response = alice_api.post("/api/tasks/", {"kind": "simulate", "params": sent}, format="json")
        assert_error(response, 400, "invalid")
        checked("/api/tasks/", "POST", response)
    for component, field in (("Task", "params"), ("Workload", "params")):
        assert schema["components"]["schemas"][component]["properties"][field]["type"] == "object"


def test_the_task_endpoints_answer_as_documented(alice_api: APIClient, checked: Callable[..., Any]) -> None:
    queued = alice_api.post("/api/tasks/", {"kind": "simulate", "params": {}}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    task = checked("/api/tasks/", "POST", queued)
    assert task is not None and queued.status_code == 202
    mismatch = alice_api.post("/api/tasks/", {"kind": "primes"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert_error(mismatch, 422)
    checked("/api/tasks/", "POST", mismatch)
    bad_key = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="a b")
    assert_error(bad_key, 400)
    checked("/api/tasks/", "POST", bad_key)
    alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json")

    first = alice_api.get("/api/tasks/", {"limit": 1})
    following = checked("/api/tasks/", "GET", first)["next"]
    assert "cursor=" in following
    second = alice_api.get(following)
    assert checked("/api/tasks/", "GET", second)["results"][0]["id"] == task["id"]
    assert_error(alice_api.get("/api/tasks/", HTTP_ACCEPT="text/html"), 406, "not_acceptable")
    checked("/api/tasks/", "GET", alice_api.get("/api/tasks/", HTTP_ACCEPT="text/html"))

    detail = "/api/tasks/{task_id}/"
    checked(detail, "GET", alice_api.get(queued["Location"]))
    checked(detail, "GET", alice_api.get(f"/api/tasks/{uuid.uuid4()}/"))
    cancel, retry = f"{detail}cancel/", f"{detail}retry/"
    checked(cancel, "POST", alice_api.post(f"/api/tasks/{task['id']}/cancel/"))
    again = alice_api.post(f"/api/tasks/{task['id']}/cancel/")
    assert_error(again, 409, "conflict")
    checked(cancel, "POST", again)
    retried = alice_api.post(f"/api/tasks/{task['id']}/retry/")
    assert retried.status_code == 202 and retried["Location"]
    checked(retry, "POST", retried)
    running = alice_api.post(f"{retried['Location']}retry/")
    assert_error(running, 409, "conflict")
    checked(retry, "POST", running)


def test_refusals_before_the_view_answer_as_documented(alice: User, checked: Callable[..., Any], settings) -> None:
    anonymous = APIClient(enforce_csrf_checks=True)
    checked("/api/tasks/", "GET", anonymous.get("/api/tasks/"))
    checked("/api/workloads/", "GET", anonymous.get("/api/workloads/", HTTP_AUTHORIZATION="Token not-a-token"))
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(alice)
    without_csrf = session.post("/api/tasks/", {"kind": "simulate"}, format="json")
    assert_error(without_csrf, 403)
    checked("/api/tasks/", "POST", without_csrf)
    checked("/api/auth/logout/", "POST", session.post("/api/auth/logout/"))
    settings.API_MAX_BODY_BYTES = 100
    too_large = session.post("/api/auth/login/", {"username": "alice", "password": "x" * 200}, format="json")
    assert_error(too_large, 413, "too_large")
    checked("/api/auth/login/", "POST", too_large)


def test_an_events_cursor_past_retention_or_beyond_the_newest_answers_as_documented(
    alice_api: APIClient, alice: User, checked: Callable[..., Any]
) -> None:
    for _ in range(3):
        alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json")
    checked("/api/events/", "GET", alice_api.get("/api/events/", {"after": 0, "limit": 2}))
    Event.objects.filter(user=alice, sequence__lt=3).update(created_at=timezone.now() - timedelta(days=8))
    assert delete_expired_events() == 2
    gone = alice_api.get("/api/events/?after=0")
    assert_error(gone, 410, "resync")
    checked("/api/events/", "GET", gone)
    ahead = alice_api.get("/api/events/?after=4")  # beyond the newest event, 3
    assert_error(ahead, 400, "invalid")
    checked("/api/events/", "GET", ahead)


def test_queueing_past_the_rate_limit_answers_the_documented_429(
    alice_api: APIClient, alice: User, checked: Callable[..., Any], settings
) -> None:
    settings.TASK_RATE_LIMIT = "1/day"
    rate_limits.clear("queue", alice.pk, settings.TASK_RATE_LIMIT)
    try:
        checked("/api/tasks/", "POST", alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json"))
        limited = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json")
        assert_error(limited, 429, "throttled")
        checked("/api/tasks/", "POST", limited)
    finally:
        rate_limits.clear("queue", alice.pk, settings.TASK_RATE_LIMIT)


def test_the_account_and_inbox_endpoints_answer_as_documented(
    anonymous: APIClient, checked: Callable[..., Any]
) -> None:
    credentials = {"username": "carol", "password": PASSWORD}
    checked("/api/auth/signup/", "POST", anonymous.post("/api/auth/signup/", credentials, format="json"))
    wrong = anonymous.post("/api/auth/login/", {**credentials, "password": "wrong"}, format="json")
    assert_error(wrong, 400)
    checked("/api/auth/login/", "POST", wrong)
    checked("/api/auth/login/", "POST", anonymous.post("/api/auth/login/", credentials, format="json"))
    token = checked("/api/auth/token/", "POST", anonymous.post("/api/auth/token/", credentials, format="json"))
    script = APIClient(HTTP_AUTHORIZATION=f"Token {token['token']}")
    checked("/api/auth/me/", "GET", script.get("/api/auth/me/"))
    checked("/api/workloads/", "GET", script.get("/api/workloads/"))
    script.post("/api/tasks/", {"kind": "simulate"}, format="json")
    checked("/api/notifications/", "GET", script.get("/api/notifications/"))
    checked("/api/notifications/read/", "POST", script.post("/api/notifications/read/", {"up_to": 5}, format="json"))
    checked("/api/events/", "GET", script.get("/api/events/"))
    checked("/api/auth/token/", "DELETE", script.delete("/api/auth/token/"))
    checked("/api/auth/me/", "GET", script.get("/api/auth/me/"))
