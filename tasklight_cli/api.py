"""The REST API, as the CLI uses it (DESIGN.md §4), and the /ws/ handshake."""

from __future__ import annotations

from typing import Any, TypeGuard
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

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
# Every frame about a task carries the whole task, its parameters included: a
# text_stats text alone is up to 1 MiB, six times that as escaped JSON at worst.
# websockets' default limit (1 MiB) closed the socket (1009) at each frame of
# such a task, and the command reconnected and read the task again over REST
# every time. A limit still, against a server that sends without end.
WS_MAX_FRAME_BYTES = 64 * 1024 * 1024
LOG_IN_AGAIN = "Log in again: tasklight login"


def normalise_server(address: str) -> str:
    """``http://host:port[/prefix]`` with no trailing slash; anything else is a usage error."""
    address = address.strip()
    try:
        parts = urlsplit(address)  # a ValueError for "http://[::1"
        parts.port  # noqa: B018  # parsed when read: a ValueError for "abc", "8000x" or 99999
        httpx.URL(address)  # what httpx would refuse at the first request: control characters, bad host names
    except (ValueError, httpx.InvalidURL) as exc:
        raise CliError(f"not a valid server address: {address!r} ({exc})", Exit.USAGE) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(
            f"the server address must be http://HOST[:PORT] or https://HOST[:PORT] (got {address!r})", Exit.USAGE
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def is_task(value: Any) -> TypeGuard[dict[str, Any]]:
    """A task as the API shows it, as far as the CLI reads one."""
    return isinstance(value, dict) and all(isinstance(value.get(key), str) for key in ("id", "kind", "status"))


def api_error(response: httpx.Response) -> str | None:
    """The API's ``{error: {message, fields}}`` on one line; None if the body is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    message = error["message"].rstrip()
    fields = error.get("fields")
    if isinstance(fields, dict) and fields:
        details = []
        for name, problems in fields.items():
            text = "; ".join(str(p) for p in problems) if isinstance(problems, list) else str(problems)
            details.append(f"{name}: {text}")
        message = f"{message} ({'; '.join(details)})"
    return " ".join(message.split())


def is_workload(value: Any) -> TypeGuard[dict[str, Any]]:
    """A workload as the API shows it, as far as the CLI reads one: a name, and parameters as a JSON Schema."""
    return isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("params"), dict)


class Api:
    def __init__(self, server: str, token: str | None = None, *, refused_advice: str = LOG_IN_AGAIN) -> None:
        self.server = server
        self.token = token
        # What to do when the server refuses the token: log in again, unless it comes from TASKLIGHT_TOKEN.
        self.refused_advice = refused_advice
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

    def not_tasklight(self) -> CliError:
        """A server that answers, but not as Tasklight does: an HTML page, JSON of another shape."""
        return CliError(
            f"the server at {self.server} did not answer as Tasklight does; is it the right address?",
            Exit.UNREACHABLE,
        )

    def redirected(self, asked: str, url: str, location: str) -> CliError:
        """A server address that redirects (to https://, say) is the wrong address. The
        redirect is not followed: a token is only sent to the address it was issued for."""
        target = urljoin(url, location)
        parts = urlsplit(target)
        if not parts.path.endswith(asked):
            return CliError(f"the server at {self.server} redirects to {target}; is it the right address?", Exit.USAGE)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        server = urlunsplit((scheme, parts.netloc, parts.path.removesuffix(asked), "", ""))
        return CliError(f"the server at {self.server} redirects to {target}: use --server {server}", Exit.USAGE)

    def request(self, method: str, path: str, *, expect: int, json: Any = None) -> Any:
        try:
            response = self.http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code == expect:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise self.not_tasklight() from None
        if response.is_redirect:
            raise self.redirected(path.partition("?")[0], str(response.request.url), response.headers["Location"])
        message = api_error(response)
        if response.status_code >= 500:
            # A proxy's error page as well: the server is down, whatever answered for it.
            message = message or f"the server answered {response.status_code} {response.reason_phrase}".rstrip()
            raise CliError(f"{self.server}: {message}", Exit.UNREACHABLE)
        if message is None:
            raise self.not_tasklight()
        if response.status_code in (401, 403):
            if self.token is None:
                raise CliError(message, Exit.AUTH)
            raise CliError(f"{message} {self.refused_advice}", Exit.AUTH)
        raise CliError(message, Exit.REFUSED, status=response.status_code)

    def task_in(self, body: Any) -> dict[str, Any]:
        if not is_task(body):
            raise self.not_tasklight()
        return body

    # Endpoints

    def issue_token(self, username: str, password: str) -> str:
        try:
            body = self.request(
                "POST", "/api/auth/token/", expect=200, json={"username": username, "password": password}
            )
        except CliError as error:
            if error.status == 400:  # the username or password refused; too many attempts (429) stays a refusal
                raise CliError(error.message, Exit.AUTH) from None
            raise
        if not isinstance(body, dict) or not isinstance(body.get("token"), str) or not body["token"]:
            raise self.not_tasklight()
        return str(body["token"])

    def revoke_token(self) -> None:
        self.request("DELETE", "/api/auth/token/", expect=204)

    def submit(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.task_in(self.request("POST", "/api/tasks/", expect=202, json={"kind": kind, "params": params}))

    def task(self, task_id: str) -> dict[str, Any]:
        return self.task_in(self.request("GET", f"/api/tasks/{quote(task_id, safe='')}/", expect=200))

    def tasks(self, limit: int) -> list[dict[str, Any]]:
        page = self.request("GET", f"/api/tasks/?limit={limit}", expect=200)
        results = page.get("results") if isinstance(page, dict) else None
        if not isinstance(results, list):
            raise self.not_tasklight()
        return [self.task_in(task) for task in results]

    def workloads(self) -> list[dict[str, Any]]:
        """The workloads the server runs, as GET /api/workloads/ gives them."""
        body = self.request("GET", "/api/workloads/", expect=200)
        if not isinstance(body, list) or not all(is_workload(workload) for workload in body):
            raise self.not_tasklight()
        return body

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.task_in(self.request("POST", f"/api/tasks/{quote(task_id, safe='')}/cancel/", expect=202))

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
                max_size=WS_MAX_FRAME_BYTES,
                # Frames are read as they come; never stop reading (and miss keepalives) on a burst.
                max_queue=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if 400 <= status < 500 and status not in (401, 403):
                # What a Tasklight behind a proxy that drops the Upgrade header answers (a plain GET /ws/).
                raise CliError(
                    f"{url}: answered HTTP {status} instead of opening a WebSocket: a proxy in front of the "
                    "server may not pass WebSockets, or the server is not Tasklight",
                    Exit.UNREACHABLE,
                ) from None
            if status < 400:
                raise self.not_tasklight() from None
            code = Exit.AUTH if status in (401, 403) else Exit.UNREACHABLE
            raise CliError(f"{url}: the WebSocket handshake was refused (HTTP {status})", code) from None
        except InvalidURI as exc:
            # websockets follows a redirect (without the token, to another host) unless it
            # leads out of ws:// and wss://, as a redirect to https:// does.
            if isinstance(exc.__context__, InvalidStatus):
                raise self.redirected("/ws/", url, exc.uri) from None
            raise CliError(f"{url}: {exc}", Exit.USAGE) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise self.unreachable(exc) from None
