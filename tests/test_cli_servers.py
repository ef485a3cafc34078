"""The `tasklight` command against servers that misbehave in ways a real
Tasklight cannot be made to (docs/cli.md, "Errors and exit codes"): a web
server that is not Tasklight, one that redirects, a /ws/ that ends the
wait, and one that never lets the socket connect. Each is a small server in a thread of this process; the command is the
installed script, as in tests/test_cli.py."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from .stack import ROOT
from .test_cli import TASKLIGHT, runner

TASK_ID = "3f1c2a4e-9b7d-4c1e-8f2a-5d6e7f8a9b0c"
RUNNING = {"id": TASK_ID, "kind": "simulate", "status": "running", "progress": 40, "created_at": None}
HELLO = {"type": "hello", "user": "alice", "last_event_id": 0, "unread": 0, "read_up_to": 0}

# (status, headers, body) for any method and path.
Answer = tuple[int, dict[str, str], bytes]
# Given the path and the request's body.
Answering = Callable[[str, bytes], Answer]


@pytest.fixture
def web_server() -> Iterator[Callable[[Answering], str]]:
    """Starts a web server that answers every request with ``answer(path, body)``; returns its address."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(answer: Answering) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # as a real web server speaks: the WebSocket handshake needs it

            def respond(self) -> None:
                request_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, body = answer(self.path, request_body)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = respond

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def html_page(path: str, body: bytes) -> Answer:
    return 200, {"Content-Type": "text/html"}, b"<!doctype html><title>Welcome to nginx!</title>"


def other_json(path: str, body: bytes) -> Answer:
    return 200, {"Content-Type": "application/json"}, b'{"hello": "world"}'


def moved_to_https(path: str, body: bytes) -> Answer:
    return 301, {"Location": f"https://tasklight.example.com{path}"}, b""


def task_list(path: str, body: bytes) -> Answer:
    tasks = [{**RUNNING, "id": f"{TASK_ID[:-1]}{n}", "result": {"word": "café"}} for n in range(10)]
    return 200, {"Content-Type": "application/json"}, json.dumps({"results": tasks}).encode()


COMMANDS = [
    pytest.param(["list"], "", id="list"),
    pytest.param(["list", "--json"], "", id="list-json"),
    pytest.param(["login", "--username", "alice", "--password-stdin"], "a password\n", id="login"),
    pytest.param(["submit", "simulate"], "", id="submit"),
    pytest.param(["submit", "simulate", "--wait"], "", id="submit-wait"),
    pytest.param(["wait", TASK_ID], "", id="wait"),
    pytest.param(["cancel", TASK_ID], "", id="cancel"),
    pytest.param(["workloads"], "", id="workloads"),
    pytest.param(["workloads", "--json"], "", id="workloads-json"),
]


@pytest.mark.parametrize("answer", [html_page, other_json])
@pytest.mark.parametrize(("command", "stdin"), COMMANDS)
def test_a_server_that_is_not_tasklight_is_named_in_one_line(
    web_server: Any, answer: Answering, command: list[str], stdin: str, tmp_path: Path
) -> None:
    server = web_server(answer)
    run = runner(tmp_path / "config", TASKLIGHT_URL=server, TASKLIGHT_TOKEN="some-token")

    result = run(*command, stdin=stdin)

    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [
        f"tasklight: the server at {server} did not answer as Tasklight does; is it the right address?"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("command", "stdin", "asked"),
    [
        (["list"], "", "/api/tasks/?limit=20"),
        (["login", "--username", "alice", "--password-stdin"], "a password\n", "/api/auth/token/"),
        (["submit", "simulate"], "", "/api/tasks/"),
        (["submit", "simulate", "--wait"], "", "/ws/"),  # the socket is opened first
        (["workloads"], "", "/api/workloads/"),
    ],
)
def test_a_redirecting_server_says_which_address_to_use(
    web_server: Any, command: list[str], stdin: str, asked: str, tmp_path: Path
) -> None:
    server = web_server(moved_to_https)
    run = runner(tmp_path / "config", TASKLIGHT_URL=server, TASKLIGHT_TOKEN="some-token")

    result = run(*command, stdin=stdin)

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"tasklight: the server at {server} redirects to https://tasklight.example.com{asked}: "
        "use --server https://tasklight.example.com"
    ]


@pytest.mark.parametrize("command", [["list"], ["list", "--json"]])
def test_a_closed_stdout_ends_the_command_quietly(web_server: Any, command: list[str], tmp_path: Path) -> None:
    server = web_server(task_list)
    reading_end, writing_end = os.pipe()
    os.close(reading_end)  # as `| head -1` does once it has its line
    try:
        result = subprocess.run(
            [str(TASKLIGHT), *command],
            stdout=writing_end,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "TASKLIGHT_URL": server, "TASKLIGHT_TOKEN": "t"},
            timeout=30,
        )
    finally:
        os.close(writing_end)

    assert result.returncode == 141
    assert result.stderr == ""


def test_list_json_prints_text_as_it_is(web_server: Any, tmp_path: Path) -> None:
    server = web_server(task_list)
    run = runner(tmp_path / "config", TASKLIGHT_URL=server, TASKLIGHT_TOKEN="some-token")

    result = run("list", "--json")

    assert result.returncode == 0, result.stderr
    assert '"word": "café"' in result.stdout
    assert json.loads(result.stdout)[0]["result"] == {"word": "café"}


class FakeTasklight:
    """GET /api/tasks/<id>/ answers RUNNING; each /ws/ connection plays the next
    of ``sockets``: a function given the connection once it is open."""

    def __init__(self, sockets: list[Callable[[ServerConnection], None]]) -> None:
        self.sockets = iter(sockets)

    def answer(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/ws/":
            return None  # the handshake goes on
        if request.path == f"/api/tasks/{TASK_ID}/":
            return connection.respond(200, json.dumps(RUNNING))
        return connection.respond(404, json.dumps({"error": {"code": "not_found", "message": "Not found."}}))

    def play(self, connection: ServerConnection) -> None:
        next(self.sockets)(connection)


def hello_then_close(code: int, reason: str) -> Callable[[ServerConnection], None]:
    def play(connection: ServerConnection) -> None:
        connection.send(json.dumps(HELLO))
        connection.close(code, reason)

    return play


def error_frame(connection: ServerConnection) -> None:
    """As the server refuses one socket too many for the user (live/consumers.py)."""
    connection.send(
        json.dumps({"type": "error", "code": "too_many_sockets", "message": "At most 20 sockets per user."})
    )
    connection.close(4429, "too many sockets")


def too_many_frames_after_hello(connection: ServerConnection) -> None:
    connection.send(json.dumps(HELLO))
    connection.send(json.dumps({"type": "error", "code": "too_many_frames", "message": "At most 5 frames per second."}))
    connection.close(4429, "too many frames")


@pytest.mark.parametrize(
    ("sockets", "code", "reason"),
    [
        pytest.param(
            [hello_then_close(4401, "token revoked")],
            4,
            "the server refused the token on /ws/. TASKLIGHT_TOKEN is refused",
            id="token-revoked",
        ),
        pytest.param(
            [hello_then_close(4429, "too many sockets")],
            5,
            "the server refused another socket: too many open for this user",
            id="too-many-sockets",
        ),
        # Dropped, then refused on the reconnect: the first frame is an error.
        # It said only the server's message: now what it means, and what to do.
        pytest.param(
            [hello_then_close(1011, "restarting"), error_frame],
            5,
            "the server refused another socket: too many open for this user (At most 20 sockets per user.); "
            "close a browser tab of Tasklight or another `tasklight ... --wait`, then try again",
            id="error-frame",
        ),
        # 4429 after a flood of frames is not "too many sockets".
        pytest.param(
            [too_many_frames_after_hello],
            5,
            "the server closed the socket: too many frames (At most 5 frames per second.)",
            id="too-many-frames",
        ),
    ],
)
def test_whatever_ends_the_wait_it_says_the_task_goes_on(
    sockets: list[Callable[[ServerConnection], None]], code: int, reason: str, tmp_path: Path
) -> None:
    fake = FakeTasklight(sockets)
    with serve(fake.play, "127.0.0.1", 0, process_request=fake.answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        run = runner(tmp_path / "config", TASKLIGHT_URL=address, TASKLIGHT_TOKEN="some-token")

        result = run("wait", TASK_ID)

    assert result.returncode == code
    last = result.stderr.splitlines()[-1]
    assert last.startswith("tasklight: ") and reason in last
    assert last.endswith(f". Stopped waiting; the task goes on: tasklight wait {TASK_ID}")


def test_a_parameter_nested_deeper_than_python_reads_is_sent_as_text(web_server: Any, tmp_path: Path) -> None:
    """Not JSON that Python can read, so a string, as any other value that is not JSON."""
    received: list[Any] = []

    def accepted(path: str, body: bytes) -> Answer:
        received.append(json.loads(body))
        return 202, {"Content-Type": "application/json"}, json.dumps(RUNNING).encode()

    server = web_server(accepted)
    run = runner(tmp_path / "config", TASKLIGHT_URL=server, TASKLIGHT_TOKEN="some-token")

    result = run("submit", "text_stats", "-p", "text=" + "[" * 100_000)

    assert result.returncode == 0, result.stderr
    assert received == [{"kind": "text_stats", "params": {"text": "[" * 100_000}}]


def test_wait_reads_a_frame_of_a_task_with_a_megabyte_parameter_on_its_socket(tmp_path: Path) -> None:
    """A frame carries the whole task: text_stats' 1 MiB of text makes it
    more than websockets' default limit, which closed the socket (1009) at
    each such frame; the command reconnected every time."""
    text = "x" * (1024 * 1024)
    finished = {**RUNNING, "kind": "text_stats", "params": {"text": text}, "status": "succeeded", "progress": 100}
    finished["result"] = {"words": 1, "lines": 1, "top_words": [[text[:8], 1]]}
    sockets = 0

    def sends_the_finished_task(connection: ServerConnection) -> None:
        nonlocal sockets
        sockets += 1
        connection.send(json.dumps(HELLO))
        connection.send(json.dumps({"type": "event", "id": 1, "event": "task.succeeded", "task": finished}))
        connection.recv()  # until the command closes it

    # A second socket would mean the first was dropped: it ends the wait at once.
    fake = FakeTasklight([sends_the_finished_task, hello_then_close(4401, "a second socket")])
    with serve(fake.play, "127.0.0.1", 0, process_request=fake.answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        environment = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "TASKLIGHT_URL": address}
        environment["TASKLIGHT_TOKEN"] = "some-token"
        # This checkout's command (the installed script may belong to another checkout's editable install).
        result = subprocess.run(
            [sys.executable, "-m", "tasklight_cli", "wait", TASK_ID],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=environment,
            timeout=90,
        )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == finished["result"]
    assert sockets == 1


def test_a_parameter_from_a_file_or_standard_input_is_sent_exactly_as_read(web_server: Any, tmp_path: Path) -> None:
    """Not parsed as JSON, the final newline kept; a file's name may be bytes that are not
    UTF-8; a text that starts with @ is quoted as JSON."""
    received: list[Any] = []

    def accepted(path: str, body: bytes) -> Answer:
        received.append(json.loads(body))
        return 202, {"Content-Type": "application/json"}, json.dumps(RUNNING).encode()

    server = web_server(accepted)
    named = os.fsencode(tmp_path) + b"/caf\xe9.json"  # Latin-1, not UTF-8
    Path(os.fsdecode(named)).write_text('{"a": 1}\n')
    environment = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "TASKLIGHT_URL": server, "TASKLIGHT_TOKEN": "t"}
    params = [b"table=@" + named, b"note=@-", b'format="@csv"', b"batch=20"]

    result = subprocess.run(
        [os.fsencode(TASKLIGHT), b"submit", b"export", *(part for param in params for part in (b"-p", param))],
        input=b"42\n",
        capture_output=True,
        env=environment,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    assert received == [
        {"kind": "export", "params": {"table": '{"a": 1}\n', "note": "42\n", "format": "@csv", "batch": 20}}
    ]


def closes_with(code: int) -> Callable[[ServerConnection], None]:
    def play(connection: ServerConnection) -> None:
        connection.close(code, "told by the test")

    return play


def this_checkouts_command(address: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's command (the installed script may belong to another checkout's editable install)."""
    environment = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "TASKLIGHT_URL": address}
    environment["TASKLIGHT_TOKEN"] = "some-token"
    return subprocess.run(
        [sys.executable, "-m", "tasklight_cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=90,
    )


def test_a_first_socket_told_to_try_again_says_so_once_and_when_it_connects(tmp_path: Path) -> None:
    """Told to try again (1013) before any hello, the command tried again for
    up to a minute, saying nothing: a silent minute. Now it says so once, on
    stderr, however many attempts follow, and says when it has connected."""
    finished = {**RUNNING, "status": "succeeded", "progress": 100, "result": {"slept": 0}}

    def sends_the_finished_task(connection: ServerConnection) -> None:
        connection.send(json.dumps(HELLO))
        connection.send(json.dumps({"type": "event", "id": 1, "event": "task.succeeded", "task": finished}))
        with contextlib.suppress(ConnectionClosed):
            connection.recv()  # until the command closes it

    fake = FakeTasklight([closes_with(1013), closes_with(1013), closes_with(1013), sends_the_finished_task])
    with serve(fake.play, "127.0.0.1", 0, process_request=fake.answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        result = this_checkouts_command(f"http://127.0.0.1:{server.socket.getsockname()[1]}", tmp_path, "wait", TASK_ID)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"slept": 0}
    notes = [line for line in result.stderr.splitlines() if line.startswith("tasklight: ")]
    assert notes == [
        "tasklight: the server asked to try again later (1013); trying again for up to 60 s",
        "tasklight: connected",
    ]


def test_a_first_socket_that_never_connects_ends_in_one_line_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told to try again at every attempt: after RECONNECT_FOR (a minute;
    here a second) the command gives up, saying it could not connect, not
    that it "lost the connection" it never had."""
    from tasklight_cli import live
    from tasklight_cli.api import Api
    from tasklight_cli.errors import CliError, Exit

    monkeypatch.setattr(live, "RECONNECT_FOR", 1.0)
    started: list[bool] = []

    def start() -> dict[str, Any]:
        started.append(True)
        return RUNNING

    fake = FakeTasklight([closes_with(1013)] * 20)
    with serve(fake.play, "127.0.0.1", 0, process_request=fake.answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        stderr = io.StringIO()
        with Api(address, "some-token") as api, pytest.raises(CliError) as raised:
            live.follow(api, start, live.ProgressBar(stderr, interactive=False))

    assert raised.value.code == Exit.UNREACHABLE
    assert raised.value.message == (
        f"could not connect to {address}/ws/ in 1 s (the server asked to try again later (1013))"
    )
    assert stderr.getvalue() == "tasklight: the server asked to try again later (1013); trying again for up to 1 s\n"
    assert started == []  # nothing queued or read: the socket comes first


def test_a_socket_taken_and_left_silent_ends_in_one_line_saying_so(tmp_path: Path) -> None:
    """A proxy that takes the socket and passes nothing: it said "cannot
    reach ... (timed out)", as if nothing had answered."""

    def says_nothing(connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            connection.recv()  # until the command closes it

    fake = FakeTasklight([says_nothing])
    with serve(fake.play, "127.0.0.1", 0, process_request=fake.answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        result = this_checkouts_command(address, tmp_path, "wait", TASK_ID)

    assert result.returncode == 3
    assert result.stderr.splitlines() == [f"tasklight: {address}/ws/ took the socket but sent no hello in 15 s"]
