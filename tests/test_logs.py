"""Structured logs (issue 7, check 3): one task's id in the log lines of the
web process and of the worker, so that it can be followed end to end."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import traceback
import types
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from billiard.exceptions import WorkerLostError
from celery.exceptions import Reject
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tasklight import logs

from .stack import HTTP_TIMEOUT, Account, terminal_for, wait_for


def json_lines(text: str) -> list[dict[str, Any]]:
    """The log's JSON lines; Celery's start-up banner is plain text."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def format_record(formatter: logging.Formatter, message: str, **extra: Any) -> str:
    record = logging.LogRecord("tasklight.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    logs.ContextFilter().filter(record)
    return formatter.format(record)


# --- The pieces alone ---------------------------------------------------------------


def test_a_json_line_carries_the_ids_in_context() -> None:
    request_token = logs.request_id.set("req-1")
    try:
        line = format_record(logs.JsonFormatter(), "task queued", task_id="t-1", kind="simulate")
    finally:
        logs.request_id.reset(request_token)
    parsed = json.loads(line)
    assert parsed["message"] == "task queued"
    assert parsed["level"] == "INFO" and parsed["logger"] == "tasklight.test"
    assert parsed["time"].endswith("Z")
    assert (parsed["request_id"], parsed["task_id"], parsed["kind"]) == ("req-1", "t-1", "simulate")


def test_a_line_outside_any_request_or_task_has_no_ids() -> None:
    parsed = json.loads(format_record(logs.JsonFormatter(), "idle"))
    assert "request_id" not in parsed and "task_id" not in parsed
    assert format_record(logs.PlainFormatter(), "idle").endswith(" INFO tasklight.test: idle")


def test_a_plain_line_is_readable_and_names_the_task() -> None:
    task_token = logs.task_id.set("t-2")
    try:
        line = format_record(logs.PlainFormatter(), "task started")
    finally:
        logs.task_id.reset(task_token)
    assert line.endswith(" INFO tasklight.test [task=t-2]: task started")


def test_an_overlong_traceback_is_cut_in_its_middle() -> None:
    try:
        raise RuntimeError("C" * 1_000_000)
    except RuntimeError:
        exc_info = sys.exc_info()
    for formatter in (logs.JsonFormatter(), logs.PlainFormatter()):
        record = logging.LogRecord("tasklight.test", logging.ERROR, __file__, 1, "raised", None, exc_info)
        line = formatter.format(record)
        assert len(line) < logs.MAX_TRACEBACK_LENGTH + 1000
        text = json.loads(line)["exc_info"] if isinstance(formatter, logs.JsonFormatter) else line
        assert text.startswith("Traceback (most recent call last):") or "raised\nTraceback" in text
        assert "RuntimeError: CCCC" in text
        assert f"… [cut: {len(''.join(traceback.format_exception(*exc_info))) - 16_000 - 1:,} characters] …" in text
        assert text.endswith("C" * 100)


def test_a_short_traceback_is_whole() -> None:
    try:
        raise RuntimeError("short")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("tasklight.test", logging.ERROR, __file__, 1, "raised", None, exc_info)
    assert json.loads(logs.JsonFormatter().format(record))["exc_info"].endswith("RuntimeError: short")


def test_a_sane_request_id_is_kept_and_echoed(db: None) -> None:
    response = Client().get("/healthz", HTTP_X_REQUEST_ID="edge-7f3a.42")
    assert response["X-Request-ID"] == "edge-7f3a.42"


@pytest.mark.parametrize("header", [None, "", "a b", 'quote"d', "x" * 129, "new\nline"])
def test_a_missing_or_odd_request_id_is_replaced_by_a_new_one(db: None, header: str | None) -> None:
    headers = {} if header is None else {"X-Request-ID": header}
    first = Client().get("/healthz", headers=headers)["X-Request-ID"]
    second = Client().get("/healthz", headers=headers)["X-Request-ID"]
    assert first != header and len(first) == 32 and first != second


# --- A real web process and worker ------------------------------------------------------


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_one_task_can_be_followed_from_the_api_through_the_worker_to_the_socket(private_stack: Any) -> None:
    running = private_stack(LOG_FORMAT="json", LOG_DELIVERIES="1")
    worker = running.start_worker(concurrency=1, LOG_FORMAT="json")
    alice = Account.sign_up(running.base_url)
    request_id = f"test-{uuid.uuid4().hex}"

    with alice.socket() as socket:
        response = alice.http.post(
            "/api/tasks/", json={"kind": "reverse", "params": {"text": "abc"}}, headers={"X-Request-ID": request_id}
        )
        assert response.status_code == 202, response.text
        assert response.headers["X-Request-ID"] == request_id
        task_id = response.json()["id"]
        socket.events_until(terminal_for(task_id))

    def lines_of(process: Any) -> list[dict[str, Any]]:
        return [line for line in json_lines(process.log()) if line.get("task_id") == task_id]

    # The web process: queued within the request (with its id), then the
    # terminal event sent on the socket.
    web = wait_for(
        lambda: (
            (found := lines_of(running.web)) and any(line.get("logger") == "live.delivery" for line in found) and found
        ),
        timeout=10,
        what="the web process's lines about the task",
    )
    queued = [line for line in web if line["message"] == "task queued"]
    assert len(queued) == 1 and queued[0]["request_id"] == request_id and queued[0]["kind"] == "reverse"
    delivered = [line for line in web if line["logger"] == "live.delivery"]
    assert [line["event"] for line in delivered] == ["task.succeeded"]

    # The worker: received, started, ended, all with the same id.
    ran = wait_for(
        lambda: (found := lines_of(worker)) and any(line["message"] == "task ended" for line in found) and found,
        timeout=10,
        what="the worker's lines about the task",
    )
    messages = [line["message"] for line in ran]
    assert "task started" in messages
    assert any(line.get("outcome") == "succeeded" for line in ran if line["message"] == "task ended")
    assert any("received" in message for message in messages), messages
    assert all(line["level"] in ("INFO", "DEBUG") for line in ran), ran


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_each_access_line_carries_the_request_id_the_response_echoes(private_stack: Any) -> None:
    """uvicorn writes the access line of a request (and of a WebSocket
    handshake) outside Django's middleware, where the request's id was set:
    it carried none, and could not be joined to the request's other lines."""
    running = private_stack(LOG_FORMAT="json")
    alice = Account.sign_up(running.base_url)
    probe = uuid.uuid4().hex
    http = httpx.Client(base_url=running.base_url, timeout=HTTP_TIMEOUT)
    responses = {
        f"/healthz?probe={probe}": http.get(f"/healthz?probe={probe}"),
        f"/api/tasks/?probe={probe}": http.get(f"/api/tasks/?probe={probe}", headers={"X-Request-ID": f"edge-{probe}"}),
        f"/nowhere/?probe={probe}": http.get(f"/nowhere/?probe={probe}"),
    }
    assert [response.status_code for response in responses.values()] == [200, 401, 404]
    assert responses[f"/api/tasks/?probe={probe}"].headers["X-Request-ID"] == f"edge-{probe}"

    def access_lines() -> dict[str, dict[str, Any]]:
        found = {}
        for line in json_lines(running.web.log()):
            for path in responses:
                if line["logger"] == "uvicorn.access" and f" {path} HTTP/1.1" in line["message"]:
                    found[path] = line
        return found if len(found) == len(responses) else {}

    lines = wait_for(access_lines, timeout=10, what="an access line for each request")
    for path, response in responses.items():
        assert lines[path].get("request_id") == response.headers["X-Request-ID"], (path, lines[path])

    # A WebSocket's handshake: its line carries the id its client sent.
    url = running.base_url.replace("http", "ws", 1) + f"/ws/?probe={probe}"
    headers = {"Authorization": f"Token {alice.token}", "X-Request-ID": f"socket-{probe}"}
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"

    def handshake_line() -> dict[str, Any] | None:
        for line in json_lines(running.web.log()):
            if f'"WebSocket /ws/?probe={probe}" [accepted]' in line["message"]:
                return line
        return None

    assert wait_for(handshake_line, timeout=10, what="the handshake's line").get("request_id") == f"socket-{probe}"


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a worker's pool processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (name) state ppid ...": the name may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_websocket_handshakes_answer_echoes_the_id_its_lines_carry(private_stack: Any) -> None:
    """An HTTP response echoes X-Request-ID; a socket's handshake answered
    without it, accepted or refused, so a client could not tell which log
    lines were its socket's."""
    running = private_stack(LOG_FORMAT="json")
    alice = Account.sign_up(running.base_url)
    probe = uuid.uuid4().hex
    url = running.base_url.replace("http", "ws", 1) + f"/ws/?probe={probe}"
    token = {"Authorization": f"Token {alice.token}"}

    def handshake_line(answer: str) -> dict[str, Any]:
        def find() -> dict[str, Any]:
            for line in json_lines(running.web.log()):
                if f'"WebSocket /ws/?probe={probe}&{answer}' in line["message"]:
                    return line
            return {}

        return wait_for(find, timeout=10, what=f"the handshake's line ({answer})")

    # The client's own id, kept.
    with connect(f"{url}&sent", additional_headers={**token, "X-Request-ID": f"socket-{probe}"}, open_timeout=10) as ws:
        assert ws.response.headers["X-Request-ID"] == f"socket-{probe}"
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    # None sent: the new one its lines carry.
    with connect(f"{url}&new", additional_headers=token, open_timeout=10) as ws:
        given = ws.response.headers["X-Request-ID"]
    assert handshake_line('new" [accepted]').get("request_id") == given
    # Refused (a foreign Origin): a 403 that echoes it too.
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"{url}&refused",
            additional_headers={"Origin": "http://elsewhere.example", "X-Request-ID": f"refused-{probe}"},
            open_timeout=10,
        ).close()
    assert refused.value.response.status_code == 403
    assert refused.value.response.headers["X-Request-ID"] == f"refused-{probe}"
    assert handshake_line('refused" 403').get("request_id") == f"refused-{probe}"


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_process_the_cancel_watchdog_ends_leaves_no_error_lines_but_one_killed_otherwise_does(
    private_stack: Any,
) -> None:
    """The watchdog ends the pool process of a task that ignored its cancel; Celery's
    main process wrote that exit and the task's loss as ERROR lines ("Process ...
    exited with 'signal 9 (SIGKILL)'", "Task handler raised error: WorkerLostError"),
    though nothing went wrong. They are INFO now, in JSON (the pool's line came in
    Celery's plain format once), and the watchdog's own WARNING names the task and the
    process. A pool process killed by anything else (SIGKILL: an OOM killer) is still
    an ERROR."""
    running = private_stack(LOG_FORMAT="json")
    worker = running.start_worker(concurrency=1, LOG_FORMAT="json")
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("ignores_cancellation", seconds=60)
        socket.events_until(lambda frame: frame.get("event") == "task.started")
        assert alice.http.post(f"/api/tasks/{task['id']}/cancel/").status_code == 202
        socket.events_until(terminal_for(task["id"]))

    def lines_with(*texts: str) -> list[dict[str, Any]]:
        return [line for line in json_lines(worker.log()) if all(text in line["message"] for text in texts)]

    def pool_lines(status: str) -> list[dict[str, Any]]:
        exited = lines_with(f"exited with '{status}'")
        lost = lines_with("Task handler raised error: WorkerLostError", status)
        return exited + lost if exited and lost else []

    exited, lost = wait_for(lambda: pool_lines("exitcode 86"), timeout=30, what="the pool's lines about the exit")
    (ending,) = lines_with("ending its pool process")
    assert ending["level"] == "WARNING" and ending["task_id"] == task["id"], ending
    pid = re.search(r"\(pid (\d+), exit code 86\)", ending["message"]).group(1)
    assert f"pid:{pid} exited with 'exitcode 86'" in exited["message"], exited
    for line in (exited, lost):
        assert line["level"] == "INFO" and "exc_info" not in line, line
        assert line["message"].endswith("(the cancel watchdog ended it: its task did not stop when cancelled)")
    assert [line for line in json_lines(worker.log()) if line["level"] == "ERROR"] == []

    # A pool process killed from outside, mid-task: the same two lines stay errors.
    with alice.socket() as socket:
        alice.queue("simulate", seconds=3)
        socket.events_until(lambda frame: frame.get("event") == "task.started")
        (pool_process,) = children_of(worker.popen.pid)
        os.kill(pool_process, signal.SIGKILL)
    exited, lost = wait_for(
        lambda: pool_lines("signal 9 (SIGKILL)"), timeout=30, what="the pool's lines about the killed process"
    )
    assert f"pid:{pool_process} exited" in exited["message"], exited
    assert exited["level"] == lost["level"] == "ERROR"
    assert "cancel watchdog" not in exited["message"] + lost["message"]


def test_celerys_time_limit_lines_name_their_task() -> None:
    task_id = str(uuid.uuid4())
    record = logging.LogRecord(
        "celery.worker.request",
        logging.ERROR,
        __file__,
        1,
        "Hard time limit (%ss) exceeded for %s[%s]",
        (90, "tasklight.run_task", task_id),
        None,
    )
    logs.ContextFilter().filter(record)
    assert record.task_id == task_id


@pytest.mark.parametrize(
    ("logger", "message"),
    [
        ("django.security.DisallowedHost", "Invalid HTTP_HOST header: 'scanner.example'."),
        ("uvicorn.error", "Invalid UTF-8 sequence received from client."),
    ],
)
def test_lines_any_client_can_cause_are_warnings(logger: str, message: str) -> None:
    """A scanner's bad Host header, a socket's broken text frame: ERROR lines
    (the second with uvicorn's traceback) that anyone could fill a log and
    its alerts with."""
    try:
        raise UnicodeDecodeError("utf-8", b"\\xc3", 0, 1, "unexpected end of data")
    except UnicodeDecodeError:
        record = logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None, sys.exc_info())
    logs.ClientNoiseFilter().filter(record)
    parsed = json.loads(logs.JsonFormatter().format(record))
    assert parsed["level"] == "WARNING" and "exc_info" not in parsed


@pytest.mark.parametrize(
    ("message", "args", "intended"),
    [
        ("Process %r pid:%r exited with %r", ("ForkPoolWorker-1", 4242, "exitcode 86"), True),
        ("Process %r pid:%r exited with %r", ("ForkPoolWorker-1", 4242, "signal 9 (SIGKILL)"), False),
        ("Process %r pid:%r exited with %r", ("ForkPoolWorker-1", 4242, "exitcode 860"), False),
        ("Process %r pid:%r exited with %r", ("ForkPoolWorker-1", 4242, "exitcode 1"), False),
        ("Task handler raised error: %r", (WorkerLostError("Worker exited prematurely: exitcode 86 Job: 0."),), True),
        (
            "Task handler raised error: %r",
            (WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 0."),),
            False,
        ),
        ("Task handler raised error: %r", (ValueError("exitcode 86"),), False),
    ],
)
def test_only_the_lines_about_a_process_the_cancel_watchdog_ended_are_info(
    message: str, args: tuple[Any, ...], intended: bool
) -> None:
    try:
        raise RuntimeError("the pool's traceback")
    except RuntimeError:
        record = logging.LogRecord("multiprocessing", logging.ERROR, __file__, 1, message, args, sys.exc_info())
    text = record.getMessage()

    assert logs.WatchdogExitFilter().filter(record)

    if intended:
        assert (record.levelname, record.exc_info) == ("INFO", None)
        assert record.getMessage() == f"{text} (the cancel watchdog ended it: its task did not stop when cancelled)"
    else:
        assert (record.levelname, record.getMessage()) == ("ERROR", text)
        assert record.exc_info is not None


@pytest.mark.parametrize("error", [Reject("requeued", requeue=True), ValueError("a bug")])
def test_only_a_tasks_reject_loses_its_traceback(error: BaseException) -> None:
    """Celery's line for a task that sent its message back to the queue on
    purpose (workloads/tasks.py) keeps its text; any other keeps its traceback."""
    try:
        raise error
    except BaseException:
        record = logging.LogRecord("celery.app.trace", logging.WARNING, __file__, 1, "Task %s", ("x",), sys.exc_info())

    assert logs.RejectFilter().filter(record)

    assert (record.exc_info is None) == isinstance(error, Reject)
    assert (record.levelname, record.getMessage()) == ("WARNING", "Task x")


def test_other_errors_stay_errors() -> None:
    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error: /", None, None)
    logs.ClientNoiseFilter().filter(record)
    assert record.levelname == "ERROR"


def channels_redis_error(message: str, error: BaseException) -> logging.LogRecord:
    """A record as channels_redis' pub/sub layer writes it: logger.exception."""
    try:
        raise error
    except BaseException:
        return logging.LogRecord("channels_redis.pubsub", logging.ERROR, __file__, 1, message, None, sys.exc_info())


def test_the_channel_layers_lines_about_redis_away_are_one_warning_a_minute(monkeypatch) -> None:
    """While Redis is away, channels_redis wrote an ERROR traceback every
    second ("Unexpected exception in receive task"), for the whole outage,
    in every web process. Now a WARNING naming the cause, once a minute,
    saying how many it left out; any other error it reports stays an ERROR."""
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    refused = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    outage = logs.ChannelLayerOutageFilter()
    written = []
    for second in range(125):
        now[0] = 1000.0 + second
        record = channels_redis_error("Unexpected exception in receive task", refused)
        if outage.filter(record):
            written.append((second, json.loads(logs.JsonFormatter().format(record))))
    assert [second for second, _ in written] == [0, 60, 120]
    assert all(line["level"] == "WARNING" and "exc_info" not in line for _, line in written)
    assert written[0][1]["message"] == (
        "Unexpected exception in receive task: the channel layer cannot reach Redis: "
        "ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused."
    )
    assert written[1][1]["message"].endswith("Connection refused. (59 more such lines in the last 60 s)")

    cleaning_up = channels_redis_error("Unexpected exception while cleaning-up channel:", refused)
    assert outage.filter(cleaning_up) and cleaning_up.levelname == "WARNING"  # a line of its own
    bug = channels_redis_error("Unexpected exception in receive task", KeyError("not Redis"))
    assert outage.filter(bug) and bug.levelname == "ERROR" and bug.exc_info is not None


def django_request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "django.request"]


def test_djangos_line_for_a_503_answered_for_a_dependency_down_is_one_warning_a_minute(
    alice: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While PostgreSQL or Redis was down, Django wrote an ERROR ("Service
    Unavailable: /api/auth/me/") for every 503 Tasklight answered because of
    it, and one for every /readyz a probe asked, on top of Tasklight's own
    WARNING: an ERROR a request, the whole outage long. Now a WARNING naming
    the answer, once a minute for each answer, with the count left out; a
    bug's 500 stays an ERROR."""
    import dataclasses

    from django.db import OperationalError
    from rest_framework.test import APIClient

    from accounts.api import MeView
    from tasklight import health, views

    now = [1000.0]
    monkeypatch.setattr(logs, "time", types.SimpleNamespace(monotonic=lambda: now[0]))  # the filter's clock alone
    for outage in logging.getLogger("django.request").filters:  # what earlier tests left in it
        if isinstance(outage, getattr(logs, "DependencyDownFilter", ())):
            monkeypatch.setattr(outage, "_written_at", {})
            monkeypatch.setattr(outage, "_left_out", Counter())
    client = APIClient(raise_request_exception=False)
    client.force_login(alice)

    def database_down(*args: Any) -> None:
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr(MeView, "get", database_down)
    caplog.set_level(logging.INFO)
    for second in range(125):
        now[0] = 1000.0 + second
        response = client.get("/api/auth/me/")
        assert (response.status_code, response.json()["error"]["code"]) == (503, "database_unavailable")
    lines = django_request_lines(caplog)
    assert [(line.levelname, line.getMessage()) for line in lines] == [
        ("WARNING", "Service Unavailable: /api/auth/me/: answered 503 database_unavailable, a dependency being down"),
        (
            "WARNING",
            "Service Unavailable: /api/auth/me/: answered 503 database_unavailable, a dependency being down "
            "(59 more such lines in the last 60 s)",
        ),
        (
            "WARNING",
            "Service Unavailable: /api/auth/me/: answered 503 database_unavailable, a dependency being down "
            "(59 more such lines in the last 60 s)",
        ),
    ]

    # /readyz's 503, a minute of probes: one line of its own.
    caplog.clear()
    down = [dataclasses.replace(part, ok=False) for part in health.check_all()]
    monkeypatch.setattr(views, "check_all", lambda: down)
    for _ in range(3):
        assert client.get("/readyz").status_code == 503
    assert [(line.levelname, line.getMessage()) for line in django_request_lines(caplog)] == [
        ("WARNING", "Service Unavailable: /readyz: answered 503 not_ready, a dependency being down")
    ]

    # A bug's 500 is an ERROR each time.
    caplog.clear()

    def bug(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(MeView, "get", bug)
    for _ in range(2):
        assert client.get("/api/auth/me/").status_code == 500
    assert [(line.levelname, line.getMessage()) for line in django_request_lines(caplog)] == [
        ("ERROR", "Internal Server Error: /api/auth/me/")
    ] * 2


def test_djangos_line_for_a_page_answered_503_with_redis_away_is_a_warning(
    client: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log-in page needs Redis (its failure counts): a 503 page, and
    Django's line for it a WARNING, not an ERROR."""
    from accounts import views as account_views

    def redis_away(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(account_views.ThrottledAuthenticationForm, "clean", redis_away)
    caplog.set_level(logging.INFO)
    response = client.post("/login/", {"username": "alice", "password": "x"})
    assert response.status_code == 503
    (line,) = django_request_lines(caplog)
    assert line.levelname == "WARNING" and "answered 503 cache_unavailable" in line.getMessage()


@pytest.mark.parametrize("path", ["/about/", "/api/auth/me/"])
def test_a_database_down_in_a_middleware_answers_503_and_a_bugs_500_stays_an_error(
    alice: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, settings: Any, path: str
) -> None:
    """An error raised in a middleware (here the session's save, in
    SessionMiddleware's process_response) reaches no process_exception:
    Django's handler500 answered a 500 with an ERROR and its traceback for a
    database that is down. Now the 503 page (JSON under /api/) with
    Retry-After, Tasklight's WARNING, and Django's line a WARNING with no
    traceback; a bug raised there is still a 500 and an ERROR."""
    from django.db import OperationalError

    from accounts.sessions import SessionStore

    for outage in logging.getLogger("django.request").filters:  # what earlier tests left in it
        if isinstance(outage, logs.DependencyDownFilter):
            monkeypatch.setattr(outage, "_written_at", {})
            monkeypatch.setattr(outage, "_left_out", Counter())
    settings.SESSION_SAVE_EVERY_REQUEST = True  # the session is saved in process_response
    client = Client(raise_request_exception=False)
    client.force_login(alice)

    def database_down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("couldn't get a connection after 10.00 sec")

    monkeypatch.setattr(SessionStore, "save", database_down)
    caplog.set_level(logging.INFO)
    response = client.get(path)
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "database_unavailable"
    else:
        assert "Back in a moment" in response.content.decode()
    (line,) = django_request_lines(caplog)
    assert line.levelname == "WARNING" and "answered 503 database_unavailable" in line.getMessage()
    assert line.exc_info is None
    ours = [r for r in caplog.records if r.name == "tasklight.errors"]
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in ours] == [("WARNING", "database_unavailable")]

    caplog.clear()

    def bug(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(SessionStore, "save", bug)
    assert client.get(path).status_code == 500
    (line,) = django_request_lines(caplog)
    assert line.levelname == "ERROR" and line.exc_info is not None
