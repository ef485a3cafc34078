"""Real processes for integration tests: an ASGI server and Celery workers.

Everything waits for an event with a deadline, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "a-long-enough-passphrase-9"
# What the tests' HTTP requests to real processes wait for an answer.
# httpx's default, 5 s, was too short for a loaded CI machine (2 cores, a
# load average of 4 and more): a stack's first sign-up, which hashes a
# password (~0.35 s of CPU), timed out at setup. Long enough for that, still
# a bound. (A poll inside wait_for keeps a short timeout: it tries again.)
HTTP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_python(code: str) -> dict[str, Any]:
    """Runs ``code`` in a fresh interpreter; it prints a JSON object last."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tasklight.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Source for run_python: child_ended(pid, seconds), a forked child's exit
# code once it ends, or None if it had not ended within ``seconds`` (it is
# killed then, as one that hung).
CHILD_ENDED = (
    "import os, time\n"
    "def child_ended(pid, seconds):\n"
    "    deadline = time.monotonic() + seconds\n"
    "    while not (done := os.waitpid(pid, os.WNOHANG))[0]:\n"
    "        if time.monotonic() > deadline:\n"
    "            os.kill(pid, 9)\n"
    "            os.waitpid(pid, 0)\n"
    "            return None\n"
    "        time.sleep(0.001)\n"
    "    return os.waitstatus_to_exitcode(done[1])\n"
)


def fork_holding(lock: str, *, setup: str, child: str) -> dict[str, Any]:
    """In a fresh interpreter: runs ``setup``, forks while holding ``lock``
    (an expression), as a thread of a worker's main process may hold it when
    the pool forks, and runs ``child`` in the child, which ends with
    os._exit. Whether the child ended within 20 s, and its exit code."""
    indented = "".join(f"        {line}\n" for line in child.splitlines())
    return run_python(
        CHILD_ENDED + "import json\n"
        "import django; django.setup()\n"
        f"{setup}\n"
        f"with {lock}:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        f"{indented}"
        "code = child_ended(pid, 20)\n"
        "print(json.dumps({'ended': code is not None, 'exit_code': code}))"
    )


def wait_for[T](check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Polls ``check`` until it returns something truthy, or fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the thing is not up yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting {timeout} s for {what} (last error: {last_error!r})")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def pool_processes(worker: Process) -> list[int]:
    """The pids of a worker's pool processes: its main process's children."""
    pid = worker.popen.pid
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def start(name: str, command: list[str], env: Mapping[str, str], log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    env = {**env, "PATH": f"{BIN}:{env.get('PATH', '')}"}
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name, popen, log_path)


def procfile_command(process_type: str) -> str:
    """The Procfile's command for a process type: tests start what production starts."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process_type:
            return command.strip().removeprefix("exec ")
    raise KeyError(process_type)


def start_web(env: Mapping[str, str], log_dir: Path, name: str = "web", port: int | None = None) -> tuple[Process, str]:
    port = port or free_port()
    process = start(
        name,
        ["bash", "-c", f"exec {procfile_command('web')}"],
        {**env, "PORT": str(port), "HOST": "127.0.0.1"},
        log_dir,
    )
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{process.log()}")
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200

    wait_for(up, timeout=30, what=f"{name} to answer /healthz")
    return process, base_url


def start_worker(env: Mapping[str, str], log_dir: Path, name: str = "worker", concurrency: int = 2) -> Process:
    # A name of its own, and no start-up chatter with other workers (faster start).
    extra = f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h --without-gossip --without-mingle"
    process = start(
        name,
        ["bash", "-c", f"exec {procfile_command('worker')} {extra}"],
        {**env, "WORKER_CONCURRENCY": str(concurrency)},
        log_dir,
    )

    def ready() -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{process.log()}")
        return " ready." in process.log()

    wait_for(ready, timeout=60, what=f"{name} to be ready")
    return process


@dataclass
class Account:
    """A user signed up over HTTP, with an API token for scripts."""

    base_url: str
    username: str
    token: str
    http: httpx.Client = field(repr=False)

    @classmethod
    def sign_up(cls, base_url: str, username: str | None = None) -> Account:
        username = username or f"user-{uuid.uuid4().hex[:10]}"
        response = httpx.post(
            f"{base_url}/api/auth/signup/", json={"username": username, "password": PASSWORD}, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 201, response.text
        return cls.log_in(base_url, username)

    @classmethod
    def log_in(cls, base_url: str, username: str) -> Account:
        """A user signed up elsewhere (a page), with an API token of its own."""
        http = httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT)
        token = http.post("/api/auth/token/", json={"username": username, "password": PASSWORD}).json()["token"]
        http.headers["Authorization"] = f"Token {token}"
        return cls(base_url, username, token, http)

    def queue(self, kind: str, **params: Any) -> dict[str, Any]:
        response = self.http.post("/api/tasks/", json={"kind": kind, "params": params})
        assert response.status_code == 202, response.text
        return response.json()

    @contextmanager
    def socket(self, base_url: str | None = None) -> Iterator[LiveSocket]:
        url = (base_url or self.base_url).replace("http", "ws", 1) + "/ws/"
        # max_queue=None: a test that reads late must not make the client stop
        # reading (and miss its keepalive pongs) after 16 unread frames;
        # max_size=None: a frame about a task with 1 MiB of text is larger than
        # websockets' default limit.
        with connect(
            url,
            additional_headers={"Authorization": f"Token {self.token}"},
            open_timeout=10,
            max_queue=None,
            max_size=None,
        ) as ws:
            live = LiveSocket(ws)
            hello = live.next()
            assert hello["type"] == "hello" and hello["user"] == self.username, hello
            live.hello = hello
            yield live


@dataclass
class LiveSocket:
    ws: ClientConnection
    hello: dict[str, Any] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)

    def next(self, timeout: float = 30) -> dict[str, Any]:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        return frame

    def events_until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 60) -> list[dict[str, Any]]:
        """Lifecycle events received until one satisfies ``done`` (inclusive)."""
        deadline = time.monotonic() + timeout
        events = []
        while True:
            frame = self.next(timeout=max(deadline - time.monotonic(), 0.01))
            if frame["type"] == "event":
                events.append(frame)
                if done(frame):
                    return events


def until_all_finished(task_ids: list[str]) -> Callable[[dict[str, Any]], bool]:
    """For events_until: true once every one of these tasks has ended, in any order."""
    pending = set(task_ids)

    def done(frame: dict[str, Any]) -> bool:
        if frame["event"] in ("task.succeeded", "task.failed", "task.cancelled"):
            pending.discard(frame["task"]["id"])
        return not pending

    return done


def terminal_for(task_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: (
        frame["task"]["id"] == task_id
        and frame["event"]
        in (
            "task.succeeded",
            "task.failed",
            "task.cancelled",
        )
    )
