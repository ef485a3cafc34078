"""`make run`'s embedded mode, zero servers: SQLite, kombu's SQL transport and
channels-lite. The same journey as test_journey, through the README's command."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from workloads.views import PAGE_TEXT_CHARS

from .stack import (
    HTTP_TIMEOUT,
    PASSWORD,
    ROOT,
    Account,
    Process,
    free_port,
    procfile_command,
    start,
    terminal_for,
    until_all_finished,
    wait_for,
)

pytestmark = pytest.mark.embedded

CONFIGURATION = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CHANNEL_LAYER_URL",
    "SECRET_KEY",
    "DEBUG",
    "HTTPS",
    "TASKLIGHT_QUEUE",
    "CHANNEL_LAYER_PREFIX",
)


def hang_up_as_default() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start_make_run(data_dir: Path, log_path: Path, **extra_env: str) -> tuple[str, Process]:
    """`make run` on a free port with nothing configured, once it serves and
    its worker is ready."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in CONFIGURATION}
    env.update(TASKLIGHT_DATA_DIR=str(data_dir), **extra_env)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            ["make", "run", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # As from a terminal, even when these tests run under nohup: an
            # ignored SIGHUP is inherited, and make and honcho rode out the hang-up.
            preexec_fn=hang_up_as_default,
        )
    process = Process("make-run", popen, log_path)
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if popen.poll() is not None:
            raise RuntimeError(f"make run exited:\n{process.log()}")
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200 and " ready." in process.log()

    wait_for(up, timeout=120, what="make run to serve and its worker to be ready")
    return base_url, process


def descendants(pid: int) -> set[int]:
    """Every process started under ``pid``, whatever its process group or
    session (honcho starts each of its processes in a session of its own,
    the worker's pool processes have groups of their own)."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended, its parent not yet told


def ctrl_c(process: Process) -> None:
    """SIGINT to the terminal's process group, as Ctrl-C sends it; every
    process make run started is gone after it."""
    started = descendants(process.popen.pid)
    assert len(started) >= 5, started  # honcho, the web process, the worker and its two pool processes at least
    os.killpg(process.popen.pid, signal.SIGINT)
    process.popen.wait(30)
    wait_for(lambda: not any(alive(pid) for pid in started), timeout=5, what="every process of make run to end")


@pytest.fixture
def make_run(tmp_path: Path):
    base_url, process = start_make_run(tmp_path / "data", tmp_path / "make-run.log")
    yield base_url, process, tmp_path / "data"
    process.stop(signal.SIGINT, timeout=30)


def test_the_whole_loop_runs_embedded_and_ctrl_c_stops_it(make_run) -> None:
    base_url, process, data_dir = make_run
    ready = httpx.get(f"{base_url}/readyz", timeout=HTTP_TIMEOUT).json()
    assert ready["status"] == "ok"
    assert {part["name"]: part["backend"] for part in ready["parts"]} == {
        "database": "sqlite",
        "broker": "sqla+sqlite",
        "channel_layer": "AIOSQLiteChannelLayer",
    }
    assert {path.name for path in data_dir.iterdir()} >= {"tasklight.sqlite3", "broker.sqlite3", "channels.sqlite3"}

    alice, bob = Account.sign_up(base_url), Account.sign_up(base_url)
    with alice.socket() as first, alice.socket() as second, bob.socket() as bobs:
        task = alice.queue("simulate", seconds=0.5)
        for socket in (first, second):
            events = socket.events_until(terminal_for(task["id"]))
            assert [e["event"] for e in events] == ["task.queued", "task.started", "task.succeeded"]
            assert events[-1]["task"]["result"] == {"slept": 0.5}
        failing = alice.queue("simulate", seconds=0, fail=True)
        assert first.events_until(terminal_for(failing["id"]))[-1]["task"]["error"].startswith("Simulated failure")
        bobs_task = bob.queue("primes", below=100_000)
        events = bobs.events_until(terminal_for(bobs_task["id"]))
        assert events[-1]["task"]["result"] == {"count": 9592}
        assert all(frame["task"]["id"] == bobs_task["id"] for frame in bobs.frames[1:])

    # The home page cuts a long parameter as on PostgreSQL, where the database
    # cuts it (here Python does: SQLite has no tasklight_cut_strings).
    text = "\U0001f600 word " * 100  # 700 characters
    alice.queue("text_stats", text=text)
    with httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT) as browser:
        assert browser.post("/api/auth/login/", json={"username": alice.username, "password": PASSWORD}).is_success
        page = browser.get("/").text
    start = page.index('<script id="initial-tasks" type="application/json">')
    shown = json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])
    assert shown[0]["params"] == {"text": text[: PAGE_TEXT_CHARS - 1] + "\u2026"}
    assert alice.http.get("/api/tasks/").json()["results"][0]["params"] == {"text": text}

    # A bad request is logged once (DEBUG is on: Django's own handler printed it twice).
    assert alice.http.post("/api/tasks/", json={"kind": "primes", "params": {"below": -1}}).status_code == 400
    wait_for(lambda: '"POST /api/tasks/ HTTP/1.1" 400' in process.log(), timeout=10, what="the 400 to be logged")
    assert process.log().count("Bad Request: /api/tasks/") == 1, process.log()[-2000:]

    # A workload's failure is the task's outcome, not an error of the service.
    errors = [line for line in process.log().splitlines() if " ERROR " in line or ": ERROR/" in line]
    assert not errors, errors

    # Ctrl-C (SIGINT to the terminal's process group) stops the server and the
    # idle worker, which stops by itself (honcho kills what has not after 5 s)
    # and without an error (its pool processes are not signalled by honcho).
    ctrl_c(process)
    assert "sending SIGKILL" not in process.log(), process.log()[-2000:]
    errors = [line for line in process.log().splitlines() if " ERROR " in line or ": ERROR/" in line]
    assert not errors, errors


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_make_run_killed_or_its_terminal_closed_leaves_nothing_running(tmp_path: Path, sig: int) -> None:
    """honcho starts its processes in sessions of their own and handles only
    SIGINT and SIGTERM: with make and honcho killed (or hung up on, as a
    closed terminal does), the web process and the worker ran on, holding
    the port for the next make run (tasklight/parent.py)."""
    base_url, process = start_make_run(tmp_path / "data", tmp_path / "make-run.log")
    started = descendants(process.popen.pid)
    assert len(started) >= 5, started
    os.killpg(process.popen.pid, sig)  # make's group: make and honcho, not the processes it started
    process.popen.wait(30)
    wait_for(lambda: not any(alive(pid) for pid in started), timeout=15, what="every process of make run to end")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/healthz", timeout=2)


@pytest.mark.parametrize("port", ["0", "70000", "eighty"])
def test_make_run_refuses_a_port_that_is_not_one(tmp_path: Path, port: str) -> None:
    """Port 0 served on a random port while the banner said :0; 70000 ended
    in a traceback from the socket. A clear line and nothing started now."""
    env = {key: value for key, value in os.environ.items() if key not in CONFIGURATION}
    env.update(TASKLIGHT_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        ["make", "-s", "run", f"PORT={port}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"PORT must be a number from 1 to 65535, not '{port}'." in done.stderr
    assert "Tasklight on" not in done.stdout
    assert "honcho" not in done.stdout + done.stderr


def make_run_refused(data_dir: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`make run` expected to refuse: its exit and output. One that starts
    instead is stopped (its whole session) and fails the test."""
    env = {key: value for key, value in os.environ.items() if key not in CONFIGURATION}
    env.update(TASKLIGHT_DATA_DIR=str(data_dir), **extra_env)
    command = ["make", "-s", "run", f"PORT={free_port()}"]
    popen = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = popen.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        started = descendants(popen.pid)
        os.killpg(popen.pid, signal.SIGINT)
        popen.communicate(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in started), timeout=15, what="the run that started to end")
        pytest.fail("make run started instead of refusing")
    return subprocess.CompletedProcess(command, popen.returncode, stdout, stderr)


def test_one_make_run_per_data_directory_and_a_killed_one_leaves_no_stale_lock(tmp_path: Path) -> None:
    """A second make run in the same directory shared the first's SQLite
    database, broker and channel layer: two workers and two web processes on
    one set of files. It refuses at once now, naming the first, and starts
    nothing; a run on another data directory starts, and so does one after
    the first was killed (the kernel drops a dead process's flock)."""
    data_dir = tmp_path / "data"
    base_url, first = start_make_run(data_dir, tmp_path / "first.log")
    try:
        done = make_run_refused(data_dir)
        assert done.returncode != 0, done.stdout + done.stderr
        found = re.search(
            r"^make run is already running on (\S+) \(pid (\d+), (\S+)\): stop it first \(Ctrl-C\), "
            r"or give this one another TASKLIGHT_DATA_DIR\.$",
            done.stderr,
            re.MULTILINE,
        )
        assert found, done.stderr
        assert found[1] == str(data_dir)
        assert int(found[2]) in descendants(first.popen.pid)  # the first run's honcho
        assert found[3] == f"{base_url}/"
        # Nothing started, not even the migrations.
        assert done.stdout == "", done.stdout
        assert "honcho" not in done.stderr
        assert httpx.get(f"{base_url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200

        _, other = start_make_run(tmp_path / "other", tmp_path / "other.log")
        ctrl_c(other)
    finally:
        started = descendants(first.popen.pid)
        os.killpg(first.popen.pid, signal.SIGKILL)  # make and honcho: no clean-up of theirs
        first.popen.wait(30)
        wait_for(lambda: not any(alive(pid) for pid in started), timeout=15, what="every process of make run to end")

    _, again = start_make_run(data_dir, tmp_path / "again.log")
    ctrl_c(again)


@pytest.mark.parametrize("debug", [None, "1"])
def test_make_run_shows_debug_pages_on_loopback_only(tmp_path: Path, debug: str | None) -> None:
    """HOST=0.0.0.0 served the DEBUG pages (tracebacks, settings; a Host
    outside ALLOWED_HOSTS got one too) to the whole network."""
    done = make_run_refused(tmp_path / "data", HOST="0.0.0.0", **({"DEBUG": debug} if debug else {}))  # noqa: S104
    assert done.returncode != 0, done.stdout + done.stderr
    assert (
        "HOST=0.0.0.0 would show make run's DEBUG pages (tracebacks, settings) to the network: leave HOST "
        "unset (127.0.0.1), or set DEBUG=0 with SECRET_KEY, HTTPS=0 and ALLOWED_HOSTS "
        "(docs/operations.md#make-run-on-the-network).\n"
    ) in done.stderr
    assert done.stdout == "", done.stdout
    assert not (tmp_path / "data" / "tasklight.sqlite3").exists()


def test_make_run_on_the_network_with_debug_off(tmp_path: Path) -> None:
    """What the refusal asks for works: pages, static files and the API on
    every address, and no DEBUG page for a stranger's Host or a wrong URL."""
    base_url, process = start_make_run(
        tmp_path / "data",
        tmp_path / "make-run.log",
        HOST="0.0.0.0",  # noqa: S104
        DEBUG="0",
        SECRET_KEY="a-secret-of-this-machine-only",
        HTTPS="0",
        ALLOWED_HOSTS="tasklight.lan,127.0.0.1",
    )
    try:
        lan = {"Host": f"tasklight.lan:{base_url.rsplit(':', 1)[1]}"}
        assert httpx.get(f"{base_url}/static/tasklight/app.css", headers=lan, timeout=HTTP_TIMEOUT).status_code == 200
        missing = httpx.get(f"{base_url}/no-such-page/", headers=lan, timeout=HTTP_TIMEOUT)
        assert missing.status_code == 404
        assert "URLconf" not in missing.text and "DEBUG = True" not in missing.text
        stranger = httpx.get(f"{base_url}/", headers={"Host": "elsewhere.example"}, timeout=HTTP_TIMEOUT)
        assert stranger.status_code == 400
        assert "ALLOWED_HOSTS" not in stranger.text
        alice = Account.sign_up(base_url)
        task = alice.queue("simulate", seconds=0)
        wait_for(
            lambda: alice.http.get(f"/api/tasks/{task['id']}/").json()["status"] == "succeeded",
            timeout=30,
            what="the task to succeed",
        )
    finally:
        ctrl_c(process)


@contextmanager
def procfile_web_on_every_address(log_dir: Path, **extra_env: str) -> Iterator[int]:
    """The Procfile's web line as a platform or honcho runs it, outside make
    run: HOST unset (0.0.0.0), embedded unless ``extra_env`` says otherwise.
    Yields its port once it answers on loopback."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in (*CONFIGURATION, "HOST", "TASKLIGHT_PROCESS")}
    env.update(TASKLIGHT_DATA_DIR=str(log_dir / "data"), PORT=str(port), **extra_env)
    log_dir.mkdir(parents=True, exist_ok=True)
    web = start("web", ["bash", "-c", f"exec {procfile_command('web')}"], env, log_dir)
    try:

        def up() -> bool:
            if web.popen.poll() is not None:
                raise RuntimeError(f"web exited:\n{web.log()}")
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200

        wait_for(up, timeout=60, what="the web process to answer on loopback")
        yield port
    finally:
        web.stop()


def this_machines_other_address() -> str | None:
    """An address of this machine other than loopback: the one its route to
    the outside leaves from (a UDP connect sends nothing), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1, never routed for real
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def assert_refused_without_debug_pages(response: httpx.Response) -> None:
    """A 403 that says why and nothing else: no traceback, no settings."""
    assert response.status_code == 403, response.text[:500]
    assert response.text == (
        "DEBUG is on: this server answers this machine's own (loopback) clients only. To serve other machines, "
        "set DEBUG=0 with SECRET_KEY, ALLOWED_HOSTS and HTTPS (docs/operations.md#debug-is-for-this-machine-only).\n"
    )


def test_a_web_process_with_debug_on_answers_this_machine_only(tmp_path: Path) -> None:
    """The Procfile's web line binds 0.0.0.0 and embedded mode turns DEBUG
    on: run outside make run (honcho, a platform, the image's own command),
    it showed every client that reached its port Django's DEBUG pages
    (tracebacks, settings; a Host outside ALLOWED_HOSTS got one too)."""
    other = this_machines_other_address()
    if other is None:
        pytest.skip("this machine has no address other than loopback")
    with procfile_web_on_every_address(tmp_path) as port:
        # DEBUG is on: this machine's own requests still get its pages.
        assert "URLconf" in httpx.get(f"http://127.0.0.1:{port}/no-such-page/", timeout=HTTP_TIMEOUT).text
        remote = f"http://{other}:{port}"
        assert_refused_without_debug_pages(
            httpx.get(f"{remote}/no-such-page/", headers={"Host": "127.0.0.1"}, timeout=HTTP_TIMEOUT)
        )
        assert_refused_without_debug_pages(
            httpx.get(f"{remote}/", headers={"Host": "elsewhere.example"}, timeout=HTTP_TIMEOUT)
        )
        assert_refused_without_debug_pages(httpx.get(f"{remote}/healthz", timeout=HTTP_TIMEOUT))
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://{other}:{port}/ws/", open_timeout=10).close()
        assert refused.value.response.status_code == 403


def test_a_proxy_on_this_machine_does_not_open_the_debug_pages_and_debug_off_serves_everyone(tmp_path: Path) -> None:
    """A client that reaches a DEBUG web process through a proxy on this
    machine is the proxy's client (uvicorn believes X-Forwarded-For from
    127.0.0.1): refused too. With DEBUG off, as a platform runs the Procfile,
    every client is served."""
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    with procfile_web_on_every_address(tmp_path / "debug") as port:
        assert_refused_without_debug_pages(
            httpx.get(f"http://127.0.0.1:{port}/no-such-page/", headers=forwarded, timeout=HTTP_TIMEOUT)
        )
    production = {"DEBUG": "0", "SECRET_KEY": "a-secret-of-this-machine-only", "HTTPS": "0"}
    with procfile_web_on_every_address(tmp_path / "production", **production) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", headers=forwarded, timeout=HTTP_TIMEOUT).status_code == 200
        missing = httpx.get(f"http://127.0.0.1:{port}/no-such-page/", headers=forwarded, timeout=HTTP_TIMEOUT)
        assert missing.status_code == 404 and "URLconf" not in missing.text


def test_tasks_running_or_waiting_at_ctrl_c_run_at_the_next_make_run(tmp_path: Path) -> None:
    """Ctrl-C ends the worker before its task ends (honcho kills what has not
    stopped after 5 s), and the embedded broker never delivers again a
    message its worker held: the running task's, nor those of the tasks
    waiting for their owner's cap to free (each held for a retry a second
    later). The next `make run` sends them all again as it starts
    (workloads/tasks.py): the running one is taken over once its lease has
    lapsed and runs from the start."""
    from tasklight.embedded_broker import waiting_task_ids

    # A short lease, so that the second run takes the task over soon; it must
    # outlast the grace (the default 5 s is refused with it): the embedded
    # relay sends a running task again at three leases (6 s), a second after
    # a 5 s grace, a margin one slow SQLite write could eat.
    quick = {
        "TASK_LEASE_SECONDS": "2",
        "CANCEL_GRACE_SECONDS": "1",
        "CANCEL_POLL_SECONDS": "0.5",
        "RELAY_INTERVAL_SECONDS": "1",
        "MAX_RUNNING_TASKS_PER_USER": "1",
    }
    base_url, process = start_make_run(tmp_path / "data", tmp_path / "first.log", **quick)
    try:
        alice = Account.sign_up(base_url)

        def status(task: dict[str, Any]) -> str:
            return alice.http.get(f"/api/tasks/{task['id']}/").json()["status"]

        # The running one outlasts the 5 s honcho gives the worker to stop. It
        # starts before the others are queued: queued together, the two pool
        # processes could start a short one first.
        running = alice.queue("simulate", seconds=12)
        wait_for(lambda: status(running) == "running", timeout=30, what="the first task to start")
        waiting = [alice.queue("simulate", seconds=2) for _ in range(2)]
        # The waiting tasks' messages are delivered, held by the worker for their retry.
        broker = f"sqla+sqlite:///{tmp_path / 'data' / 'broker.sqlite3'}"
        wait_for(
            lambda: not {task["id"] for task in waiting} & waiting_task_ids(broker),
            timeout=10,
            what="the waiting tasks' messages to be held by the worker",
        )
        assert [status(running), *(status(task) for task in waiting)] == ["running", "queued", "queued"]
    finally:
        ctrl_c(process)

    base_url, process = start_make_run(tmp_path / "data", tmp_path / "second.log", **quick)
    try:
        with alice.socket(base_url) as socket:
            socket.ws.send('{"type": "resume", "after": 0}')
            ids = [running["id"], *(task["id"] for task in waiting)]
            events = socket.events_until(until_all_finished(ids), timeout=90)
        for task_id in ids:
            own = [e for e in events if e["task"]["id"] == task_id]
            assert [e["event"] for e in own] == ["task.queued", "task.started", "task.succeeded"]  # started once
            assert own[-1]["task"]["result"] == {"slept": 12 if task_id == running["id"] else 2}
        assert re.search(r"sent again \d queued and 1 running task\(s\) a stopped worker held", process.log())
    finally:
        ctrl_c(process)


def test_the_embedded_brokers_delivered_messages_are_deleted(tmp_path: Path) -> None:
    """kombu's SQL transport keeps every message it delivered as a hidden row;
    the workers' hourly cleanup deletes them, and only them."""
    from kombu import Connection

    from tasklight.embedded_broker import delete_delivered_messages

    url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    with Connection(url) as conn:
        queue = conn.SimpleQueue("tasklight-test")
        for n in range(3):
            queue.put({"n": n})
        delivered = queue.get(timeout=5)
        delivered.ack()
        held = queue.get(timeout=5)  # delivered, not yet acknowledged
        assert delete_delivered_messages(url) == 2
        held.ack()  # the row is not needed for it
        assert delete_delivered_messages(url) == 0
        assert queue.get(timeout=5).payload == {"n": 2}
        assert delete_delivered_messages(url) == 1
        queue.close()


def test_other_brokers_have_no_delivered_messages_to_delete() -> None:
    from tasklight.embedded_broker import delete_delivered_messages

    assert delete_delivered_messages("amqp://guest:guest@127.0.0.1:5672//") == 0


def test_the_embedded_broker_tells_whose_messages_wait(tmp_path: Path) -> None:
    from kombu import Connection

    from tasklight.embedded_broker import waiting_task_ids

    url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    assert waiting_task_ids(url) == set()  # before kombu made its table
    with Connection(url) as conn:
        queue = conn.SimpleQueue("tasklight-test")
        for task_id in ("first", "second", "third"):
            queue.put({}, headers={"id": task_id})
        queue.get(timeout=5).ack()
        assert waiting_task_ids(url) == {"second", "third"}
        queue.close()
    with pytest.raises(ValueError, match="not the embedded broker"):
        waiting_task_ids("amqp://guest:guest@127.0.0.1:5672//")
