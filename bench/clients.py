"""The clients: aiohttp for the measured HTTP load, httpx for set-up
(sign-ups, with their cookies), ``websockets`` (asyncio) for sockets.

The load shares the machine with what it measures, so its client must be
cheap: at 200 POSTs/s httpx's async client took ~75 % of a core in the
harness, more than the web process it was measuring; aiohttp takes about a
third of that (docs/benchmarks.md).

Every wait is bounded; everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import httpx
from websockets.asyncio.client import ClientConnection, connect

from . import procs

METRICS_TOKEN = "bench-metrics"  # noqa: S105  # the bench's own web processes, on loopback
PASSWORD = "bench-passphrase-not-secret-7"  # noqa: S105  # throwaway users of a throwaway database
TERMINAL = frozenset({"task.succeeded", "task.failed", "task.cancelled"})


def run_async[T](coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a client phase on uvloop when it is there (less client overhead)."""
    try:
        import uvloop

        return asyncio.run(coroutine, loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.run(coroutine)


@dataclass
class Reply:
    status_code: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    """The load's client: keep-alive connections to one server, at most
    ``connections`` at once; each request's body is read whole."""

    def __init__(self, base_url: str, connections: int) -> None:
        self.base_url = base_url
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        self.session = aiohttp.ClientSession(
            base_url=self.base_url,
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        assert self.session is not None, "use it in an async with"
        async with self.session.request(method, path, json=json, headers=headers) as response:
            return Reply(response.status, await response.read())

    async def get(self, path: str, *, headers: dict[str, str] | None = None) -> Reply:
        return await self.request("GET", path, headers=headers)

    async def post(self, path: str, *, json: Any = None, headers: dict[str, str] | None = None) -> Reply:
        return await self.request("POST", path, json=json, headers=headers)


def http_client(base_url: str, connections: int = 200) -> HttpClient:
    return HttpClient(base_url, connections)


@dataclass
class User:
    username: str
    token: str
    user_id: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


async def sign_up(base_url: str, username: str | None = None) -> User:
    """POST /api/auth/signup/ then POST /api/auth/token/, on a client of its own
    (the session cookie of the sign-up stays there)."""
    username = username or f"bench-{uuid.uuid4().hex[:12]}"
    credentials = {"username": username, "password": PASSWORD}
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30.0)) as http:
        response = await _post_patiently(http, "/api/auth/signup/", credentials)
        if response.status_code != 201:
            raise RuntimeError(f"sign-up failed: {response.status_code} {response.text[:300]}")
        user_id = response.json().get("id")
        http.cookies.clear()
        response = await _post_patiently(http, "/api/auth/token/", credentials)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"token failed: {response.status_code} {response.text[:300]}")
        return User(username, response.json()["token"], user_id)


async def _post_patiently(http: httpx.AsyncClient, path: str, body: dict[str, str], tries: int = 10) -> httpx.Response:
    """Set-up requests wait out a 503 (the shared PostgreSQL full of other
    people's test connections) for a few seconds; measured ones never retry."""
    for _ in range(tries - 1):
        response = await http.post(path, json=body)
        if response.status_code != 503:
            return response
        await asyncio.sleep(1)
    return await http.post(path, json=body)


async def sign_up_many(base_url: str, count: int, concurrency: int = 4) -> list[User]:
    """Users over the API; password hashing makes this ~0.7 s of server CPU each."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> User:
        async with gate:
            return await sign_up(base_url)

    return list(await asyncio.gather(*(one() for _ in range(count))))


def seed_users_sql(config: procs.Config, count: int, label: str) -> list[User]:
    """Many users with API tokens straight in the database (no password
    hashing: they never log in), for measurements that need hundreds."""
    users = [User(f"bench-{label}-{n}-{uuid.uuid4().hex[:6]}", secrets.token_hex(20)) for n in range(count)]
    rows = procs.sql(
        config,
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff, "
        "is_active, date_joined) SELECT '!', false, u, '', '', '', false, true, now() FROM unnest(%s::text[]) AS u "
        "RETURNING id, username",
        ([user.username for user in users],),
    )
    ids = {str(name): int(str(user_id)) for user_id, name in rows}
    for user in users:
        user.user_id = ids[user.username]
    procs.sql(
        config,
        "INSERT INTO authtoken_token (key, user_id, created) SELECT k, i, now() "
        "FROM unnest(%s::text[], %s::bigint[]) AS t(k, i)",
        ([user.token for user in users], [user.user_id for user in users]),
    )
    return users


def ws_url(base_url: str, path: str = "/ws/") -> str:
    return base_url.replace("http://", "ws://", 1) + path


async def open_socket(
    base_url: str, user: User | None, path: str = "/ws/", within: float = 30, deflate: bool = True
) -> ClientConnection:
    """An open socket; for /ws/, after its ``hello`` (checked). Like a browser,
    it offers permessage-deflate unless ``deflate`` is false."""
    ws = await connect(
        ws_url(base_url, path),
        additional_headers=user.headers if user else None,
        open_timeout=within,
        ping_interval=None,  # the server pings; the client answers by itself
        max_queue=None,
        close_timeout=2,
        compression="deflate" if deflate else None,
    )
    if user is not None:
        hello = json.loads(await asyncio.wait_for(ws.recv(), within))
        if hello.get("type") != "hello" or hello.get("user") != user.username:
            await ws.close()
            raise RuntimeError(f"unexpected first frame: {hello}")
    return ws


def scrape_metrics(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A web process's /metrics (started with METRICS_TOKEN), sample by
    sample: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    answer.raise_for_status()
    return {
        (found.name, frozenset(found.labels.items())): float(found.value)
        for family in text_string_to_metric_families(answer.text)
        for found in family.samples
    }


def finished_at(frame: dict[str, Any]) -> float:
    """The worker's commit time of a terminal event, as a Unix time (same clock)."""
    return datetime.fromisoformat(frame["task"]["finished_at"]).timestamp()


@dataclass
class EventListener:
    """Reads a socket's frames and hands each lifecycle event, with the
    Unix time it was received at, to ``on_event``."""

    ws: ClientConnection
    on_event: Callable[[dict[str, Any], float], None]
    task: asyncio.Task[None] | None = None
    error: BaseException | None = field(default=None)

    def start(self) -> EventListener:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async for raw in self.ws:
                received = time.time()
                frame = json.loads(raw)
                if frame.get("type") == "event":
                    self.on_event(frame, received)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await close_quietly(self.ws)


async def close_quietly(ws: ClientConnection, within: float = 2) -> None:
    try:
        await asyncio.wait_for(ws.close(), within)
    except Exception:
        ws.transport.abort()


async def post_task(http: HttpClient, user: User, kind: str = "noop") -> tuple[str, float]:
    """POST /api/tasks/; returns the task id and the request's duration in seconds."""
    started = time.perf_counter()
    response = await http.post("/api/tasks/", json={"kind": kind, "params": {}}, headers=user.headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 202:
        raise RuntimeError(f"POST /api/tasks/ answered {response.status_code}: {response.text[:300]}")
    return str(response.json()["id"]), elapsed


class Terminals:
    """Collects terminal events of the tasks of a phase: commit→receive
    latencies, and an asyncio.Event set once ``expected`` distinct tasks ended."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.ids: set[str] = set()
        self.latencies: list[float] = []
        self.received: dict[str, float] = {}  # task id -> when its task.succeeded arrived
        self.failed: list[dict[str, Any]] = []
        self.last_received = 0.0
        self.ignore: set[str] = set()
        self.done = asyncio.Event()

    def __call__(self, frame: dict[str, Any], received: float) -> None:
        if frame.get("event") not in TERMINAL:
            return
        task_id = frame["task"]["id"]
        if task_id in self.ids or task_id in self.ignore:
            return
        self.ids.add(task_id)
        if frame["event"] != "task.succeeded":
            self.failed.append(frame)
        else:
            self.latencies.append(received - finished_at(frame))
            self.received[task_id] = received
        self.last_received = received
        if len(self.ids) >= self.expected:
            self.done.set()

    async def wait(self, within: float) -> bool:
        try:
            await asyncio.wait_for(self.done.wait(), max(within, 0.01))
            return True
        except TimeoutError:
            return False
