"""The processes, database, queue and keys a benchmark run owns, and their cleanup.

Every process is started in a session of its own (so a Ctrl-C in the terminal
reaches only the harness) and recorded; ``stop_all`` stops them, whatever
happened. Every wait has a deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/0"

# Variables that choose where Tasklight's parts run: the harness sets them
# itself, and removes them for embedded mode (`make run`'s configuration).
CONFIGURATION = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CHANNEL_LAYER_URL",
    "SECRET_KEY",
    "DEBUG",
    "HTTPS",
    "TASKLIGHT_QUEUE",
    "CHANNEL_LAYER_PREFIX",
    "TASKLIGHT_DATA_DIR",
    "WEB_CONCURRENCY",  # one web process unless a measurement asks for more
    "DJANGO_SETTINGS_MODULE",
)


def wait_for[T](check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Polls ``check`` until it returns something truthy; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except ProcessExited:
            raise
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting {timeout:g} s for {what} (last error: {last_error!r})")


class ProcessExited(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = "\n".join(self.log().splitlines()[-30:])
            raise ProcessExited(f"{self.name} exited with {self.popen.returncode}; log tail:\n{tail}")

    def rss_kib(self) -> int:
        """VmRSS of the process itself, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the process group, SIGKILL if it is still there after ``timeout`` s."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        except ProcessLookupError:
            pass
        # Leftover children of the group (a pool process that outlived its parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


_RUNNING: list[Proc] = []


def stop_all() -> None:
    """Stops every process this run started, newest first."""
    while _RUNNING:
        proc = _RUNNING.pop()
        try:
            proc.stop()
        except Exception as exc:
            print(f"  (could not stop {proc.name} [{proc.pid}]: {exc})", file=sys.stderr)


atexit.register(stop_all)


def retire(*stopping: Proc) -> None:
    """Stops these processes (they are no longer needed) and forgets them."""
    for proc in stopping:
        proc.stop()
        if proc in _RUNNING:
            _RUNNING.remove(proc)


# --- CPU accounting -------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
# Services by the command name of their processes.
SERVICES = {"postgres": ("postgres",), "rabbitmq": ("beam.smp", "erl_child_setup"), "redis": ("redis-server",)}


def machine_cpu() -> tuple[float, float]:
    """Busy and all CPU seconds of the whole machine so far, over all cores
    (/proc/stat): two snapshots give the share of the cores in use between
    them, whoever used them."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share (0-1) of the machine's cores in use between two machine_cpu() snapshots."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else math.nan


def cpu_snapshot(groups: Mapping[str, Proc]) -> dict[str, float]:
    """CPU seconds used so far by each of our processes (with its whole
    session, which each is started in: a worker's pool processes too, which
    have process groups of their own) and by each service (children that
    exited included, through their parent's cutime), and by this harness."""
    totals = dict.fromkeys([*groups, *SERVICES], 0.0)
    by_session = {proc.pid: name for name, proc in groups.items()}
    by_comm = {comm: name for name, comms in SERVICES.items() for comm in comms}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        session = int(fields[3])
        used = sum(int(value) for value in fields[11:15]) / _TICK  # utime stime cutime cstime
        name = by_session.get(session) or by_comm.get(comm)
        if name is not None:
            totals[name] += used
    usage = resource.getrusage(resource.RUSAGE_SELF)
    totals["harness"] = usage.ru_utime + usage.ru_stime
    return totals


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after if name in before}


def raise_nofile(wanted: int) -> int:
    """Raises this process's open-file limit towards ``wanted``; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    try:
        # Root may raise the hard limit too (up to fs.nr_open).
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start(
    name: str,
    command: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    *,
    cwd: Path = ROOT,
    nofile: int | None = None,
) -> Proc:
    log_path = log_dir / f"{name}.log"

    def limits() -> None:
        if nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limits if nofile is not None else None,
        )
    proc = Proc(name, popen, log_path)
    _RUNNING.append(proc)
    return proc


def run_command(command: list[str], env: Mapping[str, str], log_dir: Path, name: str, timeout: float = 300) -> None:
    """Runs a command to completion (its output in the log dir); raises if it fails."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        done = subprocess.run(command, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{log_path.read_text(errors='replace')[-3000:]}")


def procfile_command(kind: str, **values: str) -> list[str]:
    """A line of the Procfile as an argument list: ``${NAME:-default}`` and
    ``$NAME`` from ``values`` (else the default), the program from the venv."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.split(":", 1)[0].strip() == kind)
    command = line.split(":", 1)[1].strip()
    command = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: values.get(m[1], m[2]), command)
    command = re.sub(r"\$(\w+)", lambda m: values[m[1]], command)
    words = shlex.split(command)
    if words[0] == "exec":  # the shell's; the harness starts the program itself
        words = words[1:]
    if (BIN / words[0]).exists():
        words[0] = str(BIN / words[0])
    return words


def start_web(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    name: str = "web",
    app: str = "tasklight.asgi:application",
    nofile: int | None = None,
    health_path: str | None = "/healthz",
    timeout: float = 60,
) -> tuple[Proc, str]:
    """The Procfile's web line (uvicorn) on a free loopback port, serving
    ``app``; returns it and its base URL once it answers."""
    port = free_port()
    command = procfile_command("web", HOST="127.0.0.1", PORT=str(port))
    command = [app if word == "tasklight.asgi:application" else word for word in command]
    proc = start(name, command, env, log_dir, nofile=nofile)
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        proc.check_alive()
        if health_path is None:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        return httpx.get(f"{base_url}{health_path}", timeout=2).status_code == 200

    wait_for(up, timeout=timeout, what=f"{name} to answer on port {port}")
    return proc, base_url


def queue_state(queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of a RabbitMQ queue; (0, 0) when it does not exist."""
    from kombu import Connection

    conn: Any = Connection(BROKER_URL, connect_timeout=5)  # kombu's stubs lack these attributes
    with conn:
        try:
            _, messages, consumers = conn.default_channel.queue_declare(queue=queue, passive=True)
        except conn.channel_errors:  # 404: no such queue
            return 0, 0
    return int(messages), int(consumers)


def delete_queue(queue: str) -> None:
    from kombu import Connection

    conn: Any = Connection(BROKER_URL, connect_timeout=5)
    with conn:
        conn.default_channel.queue_delete(queue)


def start_celery_worker(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    app: str,
    queue: str,
    name: str = "worker",
    concurrency: int = 2,
    loglevel: str = "WARNING",
    timeout: float = 90,
) -> Proc:
    """A prefork Celery worker; returns once it consumes from ``queue``."""
    proc = start(
        name,
        [
            str(BIN / "celery"),
            "-A",
            app,
            "worker",
            f"--loglevel={loglevel}",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            f"--queues={queue}",
            f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        env,
        log_dir,
    )

    def consuming() -> bool:
        proc.check_alive()
        return queue_state(queue)[1] >= 1

    wait_for(consuming, timeout=timeout, what=f"{name} to consume from {queue}", interval=0.25)
    return proc


@dataclass
class Config:
    """Names this run owns: its database, queue, key prefix and log folder."""

    name: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def database(self) -> str:
        return self.name.replace("-", "_")

    @property
    def template_database(self) -> str:
        return f"{self.database}_template"

    @property
    def queue(self) -> str:
        return self.name

    @property
    def prefix(self) -> str:
        return self.name

    def database_url(self, database: str | None = None) -> str:
        return f"postgres://postgres@127.0.0.1:5432/{database or self.database}"

    def stack_env(self, **overrides: str) -> dict[str, str]:
        """The environment of Tasklight's processes on PostgreSQL, RabbitMQ and Redis."""
        env = {key: value for key, value in os.environ.items() if key not in CONFIGURATION}
        env.update(
            DATABASE_URL=self.database_url(),
            CELERY_BROKER_URL=BROKER_URL,
            CHANNEL_LAYER_URL=REDIS_URL,
            SECRET_KEY="bench",  # noqa: S106  # a throwaway deployment on loopback
            HTTPS="0",
            DEBUG="0",
            WORKLOAD_MODULES="bench.workloads",
            TASK_RATE_LIMIT="1000000/min",
            MAX_RUNNING_TASKS_PER_USER="1000",
            LOG_LEVEL="WARNING",
            TASKLIGHT_QUEUE=self.queue,
            CHANNEL_LAYER_PREFIX=self.prefix,
            # The harness signs its users up from one address.
            SIGNUP_RATE_LIMIT="1000000/hour",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env


# --- PostgreSQL ---------------------------------------------------------------


def connect_pg(url: str, patience: float = 60) -> Any:
    """A psycopg connection (autocommit), waiting up to ``patience`` s while
    the shared server is full ("too many clients") or restarting (other
    people's tests do both)."""
    import psycopg

    passing = ("too many clients", "Connection refused", "starting up", "shutting down")
    deadline = time.monotonic() + patience
    while True:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            if not any(reason in str(exc) for reason in passing) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def commit_timestamps_tracked() -> bool:
    """Whether PostgreSQL records each transaction's commit time
    (``track_commit_timestamp``: read with ``pg_xact_commit_timestamp``)."""
    return sql_admin("SHOW track_commit_timestamp")[0][0] == "on"


def pg_ctlcluster(action: str) -> None:
    """Debian's ``pg_ctlcluster`` on this machine's cluster (the newest
    version installed, cluster ``main``): ``start``, ``stop`` or ``restart``,
    stopping in fast mode. Also used by tests/test_faults.py."""
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    fast = ["-m", "fast"] if action in ("stop", "restart") else []
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *fast],
        check=True,
        capture_output=True,
        timeout=120,
    )


def track_commit_timestamps(on: bool) -> None:
    """Turns ``track_commit_timestamp`` on or back to its default: the setting
    takes a restart, done with Debian's pg_ctlcluster (a local cluster only)."""
    if not POSTGRES_ADMIN_URL.startswith("postgresql://postgres@127.0.0.1:"):
        raise RuntimeError("track_commit_timestamp can only be switched on a local cluster")
    _admin_execute(f"ALTER SYSTEM {'SET track_commit_timestamp = on' if on else 'RESET track_commit_timestamp'}")
    pg_ctlcluster("restart")
    if commit_timestamps_tracked() != on:
        raise RuntimeError(f"track_commit_timestamp did not turn {'on' if on else 'off'}")


def _admin_execute(*statements: str) -> None:
    with connect_pg(POSTGRES_ADMIN_URL) as conn:
        for statement in statements:
            conn.execute(statement)  # our own database names only


def sql_admin(statement: str) -> list[tuple[object, ...]]:
    with connect_pg(POSTGRES_ADMIN_URL) as conn:
        cursor = conn.execute(statement)
        return list(cursor.fetchall()) if cursor.description else []


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain database name: {name!r}")
    return f'"{name}"'


def drop_database(name: str) -> None:
    _admin_execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")


def prepare_template(config: Config) -> None:
    """Creates the template database once per run: migrated, no rows."""
    drop_database(config.template_database)
    _admin_execute(f"CREATE DATABASE {_ident(config.template_database)}")
    env = config.stack_env(DATABASE_URL=config.database_url(config.template_database))
    run_command([sys.executable, "manage.py", "migrate_all", "--noinput"], env, config.log_dir, "migrate")


def fresh_database(config: Config) -> None:
    """The run's database, recreated empty (migrated) from the template."""
    drop_database(config.database)
    _admin_execute(f"CREATE DATABASE {_ident(config.database)} TEMPLATE {_ident(config.template_database)}")


def sql(config: Config, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Runs one statement on the run's database; returns its rows, if any."""
    with connect_pg(config.database_url().replace("postgres://", "postgresql://")) as conn:
        cursor = conn.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []


PG_COUNTERS = ("sessions", "active_time", "xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_fetched")


def pg_counters(config: Config) -> dict[str, float]:
    """PostgreSQL's counters for this run's database alone (other databases on
    the shared server are busy with other people's tests): connections opened,
    milliseconds spent running statements, transactions, rows. Empty when the
    server would not take one more connection (a diagnostic is not worth a
    failed measurement)."""
    try:
        row = sql_admin_params(
            f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = %s",  # noqa: S608  # constant names
            (config.database,),
        )[0]
    except Exception as exc:
        print(f"  (PostgreSQL's counters could not be read: {exc})", file=sys.stderr)
        return {}
    return {name: float(str(value or 0)) for name, value in zip(PG_COUNTERS, row, strict=True)}


def sql_admin_params(statement: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    with connect_pg(POSTGRES_ADMIN_URL, patience=10) as conn:
        # Statistics are flushed by each backend at most once a second.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        cursor = conn.execute(statement, params)
        return list(cursor.fetchall())


# --- Redis --------------------------------------------------------------------


def delete_redis_keys(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


def cleanup(config: Config, *, keep_database: bool = False) -> None:
    """Stops every process, then removes this run's queues, keys and databases."""
    stop_all()
    for what, action in (
        ("queue", lambda: delete_queue(config.queue)),
        ("bare queue", lambda: delete_queue(f"{config.queue}-bare")),
        ("redis keys", lambda: delete_redis_keys(config.prefix)),
    ):
        try:
            action()
        except Exception as exc:
            print(f"  (cleanup of the {what} failed: {exc})", file=sys.stderr)
    if not keep_database:
        for database in (config.database, config.template_database):
            try:
                drop_database(database)
            except Exception as exc:
                print(f"  (could not drop {database}: {exc})", file=sys.stderr)
