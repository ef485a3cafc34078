"""The `tasklight` console command (docs/cli.md), run as the installed script
against a real web process and worker, with a config directory of its own."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .stack import PASSWORD, Account, free_port, wait_for

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
def test_a_refused_token_says_to_log_in_again(stack: Any, command: list[str], tmp_path: Path) -> None:
    run = runner(tmp_path / "config", TASKLIGHT_URL=stack.base_url, TASKLIGHT_TOKEN="not-a-token")

    result = run(*command)

    assert result.returncode == 4
    [line] = stderr_lines(result)
    assert line.endswith("Log in again: tasklight login")


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
