"""The OpenAPI schema (/api/schema/) and its page (/api/docs/): true to what
the API answers, so that clients generated from it work."""

from __future__ import annotations

import pytest
import yaml
from rest_framework.test import APIClient

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
