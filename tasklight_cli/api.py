"""The REST API, as the CLI uses it (DESIGN.md §4), and the /ws/ handshake."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from . import __version__
from .errors import CliError, Exit, describe_connection_error

USER_AGENT = f"tasklight-cli/{__version__}"
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# The server pings every client every 20 s; the client's own keepalive notices
# a dead connection within 40 s even if the server's pings stop arriving.
WS_OPEN_TIMEOUT = 10.0


def normalise_server(address: str) -> str:
    """``http://host:port[/prefix]`` with no trailing slash; anything else is a usage error."""
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"the server address must start with http:// or https:// (got {address!r})", Exit.USAGE)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def error_message(response: httpx.Response) -> str:
    """The API's ``{error: {message, fields}}`` on one line, or the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"the server answered {response.status_code} {response.reason_phrase}".rstrip()
    message = error["message"].rstrip()
    fields = error.get("fields")
    if isinstance(fields, dict) and fields:
        details = []
        for name, problems in fields.items():
            text = "; ".join(str(p) for p in problems) if isinstance(problems, list) else str(problems)
            details.append(f"{name}: {text}")
        message = f"{message} ({'; '.join(details)})"
    return " ".join(message.split())


class Api:
    def __init__(self, server: str, token: str | None = None) -> None:
        self.server = server
        self.token = token
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        self.http = httpx.Client(base_url=server, headers=headers, timeout=HTTP_TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def unreachable(self, exc: BaseException) -> CliError:
        return CliError(f"cannot reach {self.server} ({describe_connection_error(exc)})", Exit.UNREACHABLE)

    def request(self, method: str, path: str, *, expect: int, json: Any = None) -> Any:
        try:
            response = self.http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code == expect:
            return response.json() if response.content else None
        message = error_message(response)
        if response.status_code in (401, 403):
            if self.token is None:
                raise CliError(message, Exit.AUTH)
            raise CliError(f"{message} Log in again: tasklight login", Exit.AUTH)
        if response.status_code >= 500:
            raise CliError(f"{self.server}: {message}", Exit.UNREACHABLE)
        raise CliError(message, Exit.REFUSED)

    # Endpoints

    def issue_token(self, username: str, password: str) -> str:
        body = self.request("POST", "/api/auth/token/", expect=200, json={"username": username, "password": password})
        return str(body["token"])

    def revoke_token(self) -> None:
        self.request("DELETE", "/api/auth/token/", expect=204)

    def submit(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        task: dict[str, Any] = self.request("POST", "/api/tasks/", expect=202, json={"kind": kind, "params": params})
        return task

    def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.request("GET", f"/api/tasks/{quote(task_id, safe='')}/", expect=200)
        return task

    def tasks(self, limit: int) -> list[dict[str, Any]]:
        page = self.request("GET", f"/api/tasks/?limit={limit}", expect=200)
        return list(page["results"])

    def cancel(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.request("POST", f"/api/tasks/{quote(task_id, safe='')}/cancel/", expect=202)
        return task

    def open_socket(self) -> ClientConnection:
        """The /ws/ socket, authenticated by the token header (no Origin: not a browser)."""
        parts = urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = urlunsplit((scheme, parts.netloc, f"{parts.path}/ws/", "", ""))
        try:
            return connect(
                url,
                additional_headers={"Authorization": f"Token {self.token}"},
                user_agent_header=USER_AGENT,
                open_timeout=WS_OPEN_TIMEOUT,
                # Frames are read as they come; never stop reading (and miss keepalives) on a burst.
                max_queue=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            code = Exit.AUTH if status in (401, 403) else Exit.UNREACHABLE
            raise CliError(f"{url}: the WebSocket handshake was refused (HTTP {status})", code) from None
        except InvalidURI as exc:
            raise CliError(f"{url}: {exc}", Exit.USAGE) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise self.unreachable(exc) from None
