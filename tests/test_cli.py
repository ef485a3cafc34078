"""The `tasklight` console command (docs/cli.md), run as the installed script
against a real web process and worker, with a config directory of its own."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .proxy import HttpProxyWithoutWebSockets
from .stack import HTTP_TIMEOUT, PASSWORD, Account, free_port, wait_for

TASKLIGHT = Path(sys.executable).parent / "tasklight"
# One line of the progress bar when stderr is not a terminal: "simulate 1a2b3c4d [###---] 40% running".
PROGRESS_LINE = re.compile(r"^(\w+) ([0-9a-f]{8}) \[[#-]+\] +(\d+)% (\w+)$")

Run = Callable[..., subprocess.CompletedProcess[str]]


def runner(config_home: Path, **env: str) -> Run:
    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        environment = {
            key: value for key, value in os.environ.items() if key not in ("TASKLIGHT_TOKEN", "TASKLIGHT_URL")
        }
        environment.update(XDG_CONFIG_HOME=str(config_home), **env)
        return subprocess.run(
            [str(TASKLIGHT), *args], input=stdin, capture_output=True, text=True, env=environment, timeout=90
        )

    return run


@pytest.fixture
def account(stack: Any) -> Account:
    """A fresh user for each test, so that `list` shows only this test's tasks."""
    return Account.sign_up(stack.base_url)


@pytest.fixture
def tasklight(stack: Any, account: Account, tmp_path: Path) -> Run:
    """The command, logged in as ``account`` with the password on stdin."""
    run = runner(tmp_path / "config", TASKLIGHT_URL=stack.base_url)
    login = run("login", "--username", account.username, "--password-stdin", stdin=f"{PASSWORD}\n")
    assert login.returncode == 0, login.stderr
    return run


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_login_keeps_the_token_in_a_file_only_its_owner_can_read(stack: Any, account: Account, tmp_path: Path) -> None:
    run = runner(tmp_path / "config", TASKLIGHT_URL=stack.base_url)
    result = run("login", "--username", account.username, "--password-stdin", stdin=f"{PASSWORD}\n")

    assert result.returncode == 0, result.stderr
    assert account.username in result.stdout
    config = tmp_path / "config" / "tasklight" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["servers"][stack.base_url]["token"] == account.token

    logout = run("logout")
    assert logout.returncode == 0, logout.stderr
    after = run("list")
    assert after.returncode == 4
    assert stderr_lines(after) == [
        f"tasklight: not logged in to {stack.base_url}: run `tasklight login` (or set TASKLIGHT_TOKEN)"
    ]


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_wrong_password_is_refused_in_one_line(stack: Any, account: Account, tmp_path: Path) -> None:
    run = runner(tmp_path / "config", TASKLIGHT_URL=stack.base_url)
    result = run("login", "--username", account.username, "--password-stdin", stdin="not-the-password\n")

    assert result.returncode == 4
    assert stderr_lines(result) == ["tasklight: The username or password is not correct."]
    assert not (tmp_path / "config" / "tasklight" / "config.json").exists()


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_submit_wait_shows_live_progress_and_prints_the_result(tasklight: Run, account: Account) -> None:
    result = tasklight("submit", "simulate", "--param", "seconds=2", "--wait")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"slept": 2}
    bar = [match.groups() for line in stderr_lines(result) if (match := PROGRESS_LINE.match(line))]
    assert bar, result.stderr
    assert bar[-1][2:] == ("100", "succeeded")
    # Progress from the WebSocket: several steps between 0 and 100 while it ran.
    steps = {int(percent) for _, _, percent, status in bar if status == "running" and 0 < int(percent) < 100}
    assert len(steps) >= 2, result.stderr
    task_id = account.http.get("/api/tasks/").json()["results"][0]["id"]
    assert {short_id for _, short_id, _, _ in bar} == {task_id[:8]}


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_submit_wait_exits_non_zero_with_the_error_of_a_failed_task(tasklight: Run) -> None:
    result = tasklight("submit", "simulate", "-p", "seconds=0.2", "-p", "fail=true", "--wait")

    assert result.returncode == 1
    assert result.stdout == ""
    assert "Simulated failure after 0.2 seconds, as requested." in stderr_lines(result)[-1]


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_bad_parameter_shows_the_apis_message(tasklight: Run) -> None:
    result = tasklight("submit", "simulate", "--param", "seconds=-1")

    assert result.returncode == 5
    [line] = stderr_lines(result)
    assert line.startswith("tasklight: The request is not valid. (params.seconds: ")


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_list_shows_the_users_tasks_newest_first(tasklight: Run) -> None:
    first = tasklight("submit", "simulate", "--param", "seconds=0")
    second = tasklight("submit", "text_stats", "--param", "text=to be or not to be")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr

    result = tasklight("list")

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "PROGRESS", "CREATED"]
    assert [row.split()[:2] for row in rows] == [
        [second.stdout.strip(), "text_stats"],
        [first.stdout.strip(), "simulate"],
    ]
    listed = json.loads(tasklight("list", "--json").stdout)
    assert [task["id"] for task in listed] == [second.stdout.strip(), first.stdout.strip()]


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_cancel_stops_a_running_task(tasklight: Run, account: Account) -> None:
    submitted = tasklight("submit", "simulate", "--param", "seconds=60")
    task_id = submitted.stdout.strip()
    wait_for(
        lambda: account.http.get(f"/api/tasks/{task_id}/").json()["status"] == "running",
        timeout=30,
        what="the task to start",
    )

    result = tasklight("cancel", task_id)

    assert result.returncode == 0, result.stderr
    assert task_id in result.stdout
    # `wait` follows it to its end: cancelled, hence a non-zero exit.
    waited = tasklight("wait", task_id)
    assert waited.returncode == 1
    assert stderr_lines(waited)[-1].startswith(f"tasklight: task {task_id} cancelled")
    assert account.http.get(f"/api/tasks/{task_id}/").json()["status"] == "cancelled"


@pytest.mark.parametrize(
    ("command", "stdin"),
    [
        (["list"], ""),
        (["submit", "simulate", "--param", "seconds=1", "--wait"], ""),
        (["cancel", "00000000-0000-0000-0000-000000000000"], ""),
        (["login", "--username", "someone", "--password-stdin"], f"{PASSWORD}\n"),
    ],
)
def test_against_a_stopped_server_it_exits_non_zero_with_a_one_line_reason(
    command: list[str], stdin: str, tmp_path: Path
) -> None:
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = runner(tmp_path / "config", TASKLIGHT_URL=server, TASKLIGHT_TOKEN="some-token")

    result = run(*command, stdin=stdin)

    assert result.returncode == 3
    assert stderr_lines(result) == [f"tasklight: cannot reach {server} (connection refused)"]
    assert result.stdout == ""


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("command", [["list"], ["submit", "simulate", "--wait"]])
def test_a_refused_token_says_to_log_in_again(tasklight: Run, account: Account, command: list[str]) -> None:
    revoked = account.http.delete("/api/auth/token/")  # elsewhere: another machine's `logout --revoke`
    assert revoked.status_code == 204

    result = tasklight(*command)

    assert result.returncode == 4
    [line] = stderr_lines(result)
    assert line.endswith("Log in again: tasklight login")


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("command", [["list"], ["submit", "simulate", "--wait"]])
def test_a_refused_tasklight_token_variable_says_to_unset_or_replace_it(
    stack: Any, command: list[str], tmp_path: Path
) -> None:
    """Logging in again cannot help: the variable overrides the stored token."""
    run = runner(tmp_path / "config", TASKLIGHT_URL=stack.base_url, TASKLIGHT_TOKEN="not-a-token")

    result = run(*command)

    assert result.returncode == 4
    [line] = stderr_lines(result)
    assert line.endswith("TASKLIGHT_TOKEN is refused: unset it or replace it.")
    assert "tasklight login" not in line


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_logout_revoke_forgets_a_token_already_revoked_elsewhere(
    stack: Any, tasklight: Run, account: Account, tmp_path: Path
) -> None:
    assert account.http.delete("/api/auth/token/").status_code == 204

    result = tasklight("logout", "--revoke")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Logged out of {stack.base_url}; the server had already revoked the token.\n"
    config = json.loads((tmp_path / "config" / "tasklight" / "config.json").read_text())
    assert config["servers"] == {}


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_too_many_failed_log_ins_is_a_refusal_not_a_wrong_password(
    stack: Any, account: Account, tmp_path: Path
) -> None:
    run = runner(tmp_path / "config", TASKLIGHT_URL=stack.base_url)
    log_in = ("login", "--username", account.username, "--password-stdin")
    for _ in range(5):  # LOGIN_FAILURES_PER_ACCOUNT
        assert run(*log_in, stdin="not-the-password\n").returncode == 4

    result = run(*log_in, stdin=f"{PASSWORD}\n")

    assert result.returncode == 5
    [line] = stderr_lines(result)
    assert line.startswith("tasklight: Too many failed log-ins; try again later.")


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_parameter_that_only_python_reads_as_a_number_is_sent_as_text(tasklight: Run, value: str) -> None:
    result = tasklight("submit", "text_stats", "-p", f"text={value}", "--wait")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["words"] == 1


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_the_result_is_printed_in_its_own_letters(tasklight: Run) -> None:
    result = tasklight("submit", "text_stats", "-p", "text=café au lait, café noir", "--wait")

    assert result.returncode == 0, result.stderr
    assert '"café"' in result.stdout
    assert json.loads(result.stdout)["top_words"][0] == ["café", 2]


# Longer than one argument may be on Linux (MAX_ARG_STRLEN, 128 KiB): exec refuses it.
LONG_TEXT = "".join(f"word{n % 7} line {n}\n" for n in range(20_000)) + "the end, no newline"


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_text_longer_than_an_argument_is_read_from_a_file_or_standard_input(
    tasklight: Run, account: Account, source: str, tmp_path: Path
) -> None:
    assert len(LONG_TEXT.encode()) > 128 * 1024
    path = tmp_path / "long text.txt"
    path.write_text(LONG_TEXT)
    if source == "file":
        result = tasklight("submit", "text_stats", "-p", f"text=@{path}", "--wait")
    else:
        result = tasklight("submit", "text_stats", "-p", "text=@-", "--wait", stdin=LONG_TEXT)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["lines"] == 20_001
    [task] = account.http.get("/api/tasks/").json()["results"]
    assert task["params"] == {"text": LONG_TEXT}  # exactly as read: not parsed, not stripped


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_workloads_lists_each_workload_and_its_parameters_without_a_login(stack: Any, tmp_path: Path) -> None:
    # Never logged in; and a token the server refuses is not sent (it would answer 401).
    run = runner(tmp_path / "config", TASKLIGHT_URL=stack.base_url, TASKLIGHT_TOKEN="not-a-token")

    result = run("workloads")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    simulate = lines.index("simulate (Simulate)")
    assert lines[simulate + 1 : simulate + 4] == [
        "  Waits for the given number of seconds, reporting progress; can be told to fail.",
        "    seconds  number 0 to 3600, default 2  How long to work, in seconds.",
        "    fail     boolean, default false       Fail at the end, with a readable error.",
    ]
    text_stats = lines.index("text_stats (Text statistics)")
    assert lines[text_stats + 2] == "    text  string, required  The text to analyse, up to 1 MiB of UTF-8."
    # Every shape of parameter (tests/workloads_for_tests.py: export), each in a few words.
    export = lines.index("export (Export)")
    assert [" ".join(line.split()) for line in lines[export + 2 : export + 13]] == [
        "table string of 1 to 40 characters, required The table to export.",
        'format one of "csv", "json", default "csv"',
        "level one of 1, 3, 9 or null, default null Compression level; empty for none.",
        'version "v2", default "v2"',
        "note string of 3 to 20 characters or null, default null",
        "dry_run boolean, default false",
        "notify boolean or null, default null Mail the owner; empty for their setting.",
        "batch integer 10 to 10000, a multiple of 10, default 100",
        "limit integer >= 1 or null, default null",
        "columns list of string, at most 5 items, default []",
        'window object, default {"start":0,"end":30}',
    ]
    assert lines[lines.index("database_backend (Database backend)") + 2] == "  no parameters"

    as_json = run("workloads", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == httpx.get(f"{stack.base_url}/api/workloads/", timeout=HTTP_TIMEOUT).json()


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_token_revoked_while_waiting_says_the_task_goes_on(tasklight: Run, account: Account, tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        waiting = subprocess.Popen(
            [str(TASKLIGHT), "submit", "simulate", "--param", "seconds=5", "--wait"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "TASKLIGHT_URL": account.base_url},
        )
    try:
        wait_for(lambda: "% running" in stderr_path.read_text(), timeout=30, what="the task to run")
        task_id = account.http.get("/api/tasks/").json()["results"][0]["id"]
        assert account.http.delete("/api/auth/token/").status_code == 204  # its socket closes with 4401
        waiting.communicate(timeout=30)
    finally:
        waiting.kill()

    assert waiting.returncode == 4
    assert stderr_path.read_text().splitlines()[-1] == (
        "tasklight: the server refused the token on /ws/. Log in again: tasklight login. "
        f"Stopped waiting; the task goes on: tasklight wait {task_id}"
    )


@pytest.mark.parametrize(
    "server",
    [
        "http://[::1",
        "http://127.0.0.1:abc",
        "http://127.0.0.1:8794x",
        "http://127.0.0.1:99999",
        "http://:8000",
        "127.0.0.1:8000",
    ],
)
@pytest.mark.parametrize("command", [["list"], ["login", "--username", "alice", "--password-stdin"]])
def test_a_bad_server_address_is_a_usage_error(server: str, command: list[str], tmp_path: Path) -> None:
    run = runner(tmp_path / "config", TASKLIGHT_TOKEN="some-token")

    result = run("--server", server, *command, stdin="a password\n")

    assert result.returncode == 2
    [line] = stderr_lines(result)
    assert line.startswith("tasklight: ") and repr(server) in line


@pytest.mark.parametrize("command", ["wait", "cancel"])
@pytest.mark.parametrize("task_id", [".", "..", "3f1c", "3f1c/../..", ""])
def test_a_task_id_must_be_a_uuid(command: str, task_id: str, tmp_path: Path) -> None:
    # Nothing listens there: the id is refused before any request.
    run = runner(tmp_path / "config", TASKLIGHT_URL=f"http://127.0.0.1:{free_port()}", TASKLIGHT_TOKEN="some-token")

    result = run(command, task_id)

    assert result.returncode == 2
    assert stderr_lines(result)[-1] == (
        f"tasklight {command}: error: argument ID: expected a task id (a UUID, as `tasklight list` shows), "
        f"got {task_id!r}"
    )


def test_a_parameter_of_bytes_that_are_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    environment = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "TASKLIGHT_TOKEN": "some-token"}

    result = subprocess.run(
        [os.fsencode(TASKLIGHT), b"submit", b"text_stats", b"-p", b"text=caf\xe9"],  # Latin-1, not UTF-8
        capture_output=True,
        env=environment,
        timeout=30,
    )

    assert result.returncode == 2
    assert (
        result.stderr.decode()
        .splitlines()[-1]
        .startswith("tasklight submit: error: argument --param/-p: not valid UTF-8: ")
    )


@pytest.mark.parametrize(
    ("param", "error"),
    [
        (
            "text=@",
            "expected a file name after text=@ (@- for standard input); "
            """a text that starts with @ is quoted as JSON: text='"@..."'""",
        ),
        ("text=@{missing}", "cannot read '{missing}' for text: No such file or directory"),
        ("text=@{directory}", "cannot read '{directory}' for text: Is a directory"),
        ("text=@{latin1}", "'{latin1}' is not UTF-8 text (byte 3 is 0xe9); text is sent as UTF-8"),
    ],
)
def test_a_parameter_from_a_file_that_cannot_be_read_is_a_usage_error(param: str, error: str, tmp_path: Path) -> None:
    names = {"missing": tmp_path / "missing.txt", "directory": tmp_path, "latin1": tmp_path / "latin1.txt"}
    names["latin1"].write_bytes(b"caf\xe9")
    # Nothing listens there: the parameter is refused before any request.
    run = runner(tmp_path / "config", TASKLIGHT_URL=f"http://127.0.0.1:{free_port()}", TASKLIGHT_TOKEN="some-token")

    result = run("submit", "text_stats", "-p", param.format(**names))

    assert result.returncode == 2
    assert stderr_lines(result)[-1] == f"tasklight submit: error: argument --param/-p: {error.format(**names)}"


def test_standard_input_is_read_for_one_parameter_only(tmp_path: Path) -> None:
    run = runner(tmp_path / "config", TASKLIGHT_URL=f"http://127.0.0.1:{free_port()}", TASKLIGHT_TOKEN="some-token")

    result = run("submit", "reverse", "-p", "text=@-", "-p", "times=@-", stdin="once")

    assert result.returncode == 2
    assert stderr_lines(result)[-1] == (
        "tasklight submit: error: argument --param/-p: standard input is read once, for text already"
    )


# The number of the read system call, as /proc/PID/syscall shows it.
READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}


def reads_standard_input(pid: int) -> bool:
    """Whether the process is blocked in read(0, ...)."""
    number, fd, *_ = Path(f"/proc/{pid}/syscall").read_text().split()
    return number == READ_SYSCALL[platform.machine()] and int(fd, 16) == 0


def test_ctrl_c_while_a_parameter_is_read_from_standard_input_stops_without_a_traceback(tmp_path: Path) -> None:
    environment = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "TASKLIGHT_TOKEN": "some-token"}
    environment["TASKLIGHT_URL"] = f"http://127.0.0.1:{free_port()}"
    reading = subprocess.Popen(
        [str(TASKLIGHT), "submit", "text_stats", "-p", "text=@-"],
        stdin=subprocess.PIPE,  # kept open: the text is still being typed
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        # As at a terminal: a test run started in the background by a shell
        # (`cmd &`) ignores SIGINT, and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(lambda: reads_standard_input(reading.pid), timeout=30, what="the command to read standard input")
        reading.send_signal(signal.SIGINT)
        stdout, stderr = reading.communicate(timeout=30)
    finally:
        reading.kill()

    assert reading.returncode == 130
    assert (stdout, stderr) == ("", "\n")


def test_login_with_no_terminal_and_no_password_stdin_says_so(tmp_path: Path) -> None:
    run = runner(tmp_path / "config", TASKLIGHT_URL=f"http://127.0.0.1:{free_port()}")

    result = run("login", "--username", "alice", stdin="")

    assert result.returncode == 2
    assert stderr_lines(result) == ["tasklight: no terminal to ask for the password: pass --password-stdin"]


@pytest.mark.parametrize(
    ("command", "prompt", "what"),
    [(["login"], "Username: ", "username"), (["login", "--username", "alice"], "Password for alice", "password")],
)
def test_ctrl_d_at_a_login_prompt_is_no_answer(command: list[str], prompt: str, what: str, tmp_path: Path) -> None:
    output = at_a_terminal(
        [str(TASKLIGHT), "--server", f"http://127.0.0.1:{free_port()}", *command],
        {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
        answers={prompt: b"\x04"},  # Ctrl-D: end of input
    )

    assert output.returncode == 2
    assert output.text.splitlines()[-1] == f"tasklight: no {what} given"
    assert "Traceback" not in output.text


@dataclass
class TerminalOutput:
    returncode: int
    text: str


def at_a_terminal(command: list[str], env: dict[str, str], answers: dict[str, bytes]) -> TerminalOutput:
    """Runs ``command`` with a pseudo-terminal as its controlling terminal
    (getpass reads /dev/tty), typing each answer once its prompt shows."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        start_new_session=True,
        # The new session takes the pseudo-terminal (its stdin) as its controlling terminal.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(terminal)
    seen = b""
    pending = dict(answers)
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, f"no output within 30 s: {seen!r}"
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every copy of the terminal is closed, the command ended
                break
            if not chunk:
                break
            seen += chunk
            for prompt in [prompt for prompt in pending if prompt.encode() in seen]:
                os.write(controller, pending.pop(prompt))
        return TerminalOutput(process.wait(timeout=30), seen.decode(errors="replace").replace("\r", ""))
    finally:
        process.kill()
        os.close(controller)


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_submit_wait_reconnects_when_the_web_process_restarts(private_stack: Any, tmp_path: Path) -> None:
    running = private_stack()
    running.start_worker(concurrency=1)
    account = Account.sign_up(running.base_url)
    environment = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TASKLIGHT_URL": running.base_url,
        "TASKLIGHT_TOKEN": account.token,
    }
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        waiting = subprocess.Popen(
            [str(TASKLIGHT), "submit", "simulate", "--param", "seconds=6", "--wait"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=environment,
        )
    try:
        wait_for(lambda: "% running" in stderr_path.read_text(), timeout=30, what="the task to run")
        running.restart_web()  # every socket drops; the task goes on in the worker
        stdout, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()

    assert waiting.returncode == 0, stderr_path.read_text()
    assert json.loads(stdout) == {"slept": 6}
    assert stderr_path.read_text().splitlines()[-1].endswith("100% succeeded")


def test_behind_a_proxy_that_does_not_pass_websockets_submit_wait_says_so_and_queues_nothing(
    stack: Any, account: Account, tmp_path: Path
) -> None:
    """The Tasklight behind it answers the handshake, passed on as a plain
    GET /ws/, with a 404: the command said the server "did not answer as
    Tasklight does; is it the right address?", which it is."""
    with HttpProxyWithoutWebSockets(stack.base_url) as proxy:
        run = runner(tmp_path / "config", TASKLIGHT_URL=proxy.base_url, TASKLIGHT_TOKEN=account.token)
        result = run("submit", "simulate", "-p", "seconds=0", "--wait")
        assert "GET /ws/" in proxy.forwarded

    assert result.returncode == 3
    assert stderr_lines(result) == [
        f"tasklight: ws://{proxy.base_url.removeprefix('http://')}/ws/: answered HTTP 404 instead of opening a "
        "WebSocket: a proxy in front of the server may not pass WebSockets, or the server is not Tasklight"
    ]
    assert account.http.get("/api/tasks/").json()["results"] == []  # the socket comes first: nothing queued
