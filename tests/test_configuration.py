"""Configuration by environment: a value that cannot mean anything stops the
process as it starts, with a line naming the variable, the value and what is
allowed (tasklight/envvars.py); a value that can is read as written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured

from tasklight.envvars import boolean, decimal_number, log_level, whole_number

from .stack import ROOT

URLS = ("DATABASE_URL", "CELERY_BROKER_URL", "CHANNEL_LAYER_URL")


def environment(**changes: str | None) -> dict[str, str]:
    """The test run's production environment (make test: the three URLs, DEBUG
    off) with ``changes``; None removes a variable."""
    # Importing tasklight.asgi marks this process "web"; the children are plain commands.
    env = {key: value for key, value in os.environ.items() if key != "TASKLIGHT_PROCESS"}
    env["DJANGO_SETTINGS_MODULE"] = "tasklight.settings"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(command: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def setup_django(**changes: str | None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-c", "import django; django.setup()"], environment(**changes))


def read_settings(*names: str, **changes: str | None) -> dict[str, object]:
    """The named settings as a process started with ``changes`` reads them."""
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{name: getattr(settings, name) for name in {list(names)!r}}}, default=str))"
    )
    done = run([sys.executable, "-c", code], environment(**changes))
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- Start-up -------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # A relay interval of 0 spun, ~470 UPDATEs a second.
        ("RELAY_INTERVAL_SECONDS", "0", "RELAY_INTERVAL_SECONDS must be a number of seconds greater than 0, not '0'"),
        # Read as 1.0 by django-environ.
        ("TASK_LEASE_SECONDS", "1,000", "TASK_LEASE_SECONDS must be a number of seconds greater than 0, not '1,000'"),
        ("CANCEL_POLL_SECONDS", "2.5s", "CANCEL_POLL_SECONDS must be a number of seconds greater than 0, not '2.5s'"),
        # Tasks waited queued for ever.
        ("MAX_RUNNING_TASKS_PER_USER", "0", "MAX_RUNNING_TASKS_PER_USER must be a whole number, 1 or more, not '0'"),
        # Below the pool's min_size: every request of a web process failed.
        ("DATABASE_POOL_MAX_SIZE", "1", "DATABASE_POOL_MAX_SIZE must be a whole number, 2 or more, not '1'"),
        ("API_MAX_BODY_BYTES", "abc", "API_MAX_BODY_BYTES must be a whole number of bytes, 1 or more, not 'abc'"),
        ("WORKER_CONCURRENCY", "-1", "WORKER_CONCURRENCY must be a whole number, 1 or more, not '-1'"),
        ("WORKER_METRICS_PORT", "70000", "WORKER_METRICS_PORT must be a whole number from 1 to 65535, not '70000'"),
        # Read as False: no secure cookies, no HSTS.
        ("HTTPS", "ture", "HTTPS must be 1 or 0 (or true/false, yes/no, on/off), not 'ture'"),
        (
            "LOG_LEVEL",
            "verbose",
            "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (in any case), not 'verbose'",
        ),
        ("TASK_SOFT_TIME_LIMIT", "3720", "TASK_SOFT_TIME_LIMIT (3720) must be less than TASK_TIME_LIMIT (3720)"),
        # Not renewed during the grace: lapsed, a redelivery closed the task
        # and its watchdog no longer killed the workload that ignored it.
        (
            "CANCEL_GRACE_SECONDS",
            "10",
            "TASK_LEASE_SECONDS (10) must be more than CANCEL_GRACE_SECONDS (10), "
            "during which a cancelled task's lease is not renewed",
        ),
        # Renewed every 5 s: one failed renewal and the healthy task ran twice.
        (
            "CANCEL_POLL_SECONDS",
            "5",
            "TASK_LEASE_SECONDS (10) must be more than twice CANCEL_POLL_SECONDS (5), which renews it",
        ),
    ],
)
def test_a_process_refuses_a_value_that_means_nothing_and_says_why(variable: str, value: str, message: str) -> None:
    done = setup_django(**{variable: value})
    assert done.returncode != 0
    assert f"ImproperlyConfigured: {message}\n" in done.stderr, done.stderr[-3000:]


def test_the_lease_may_be_short_if_it_outlasts_its_renewal_and_the_grace() -> None:
    seen = read_settings(
        "TASK_LEASE_SECONDS",
        "CANCEL_GRACE_SECONDS",
        "CANCEL_POLL_SECONDS",
        TASK_LEASE_SECONDS="2",
        CANCEL_GRACE_SECONDS="1.5",
        CANCEL_POLL_SECONDS="0.9",
    )
    assert seen == {"TASK_LEASE_SECONDS": 2.0, "CANCEL_GRACE_SECONDS": 1.5, "CANCEL_POLL_SECONDS": 0.9}
    # Only the lease's own relations: a lease of 2 s under the default 5 s grace is refused.
    assert setup_django(TASK_LEASE_SECONDS="2").returncode != 0


def test_values_are_read_as_written_and_empty_means_the_default() -> None:
    seen = read_settings(
        "TASK_LEASE_SECONDS",
        "HTTPS",
        "LOG_LEVEL",
        "SECURE_HSTS_SECONDS",
        "CONN_MAX_AGE",
        "RELAY_MIN_AGE_SECONDS",
        TASK_LEASE_SECONDS="1e3",  # was 13.0
        HTTPS="",  # was False: no secure cookies, no HSTS
        LOG_LEVEL="warning",
        SECURE_HSTS_SECONDS=" 0 ",
        CONN_MAX_AGE="",
        RELAY_MIN_AGE_SECONDS="0",
    )
    assert seen == {
        "TASK_LEASE_SECONDS": 1000.0,
        "HTTPS": True,
        "LOG_LEVEL": "WARNING",
        "SECURE_HSTS_SECONDS": 0,
        "CONN_MAX_AGE": 0,
        "RELAY_MIN_AGE_SECONDS": 0.0,
    }


def test_a_log_level_in_lower_case_starts_the_process() -> None:
    """LOG_LEVEL=info crashed every process: "Unable to configure logger 'uvicorn'"."""
    done = run([sys.executable, "manage.py", "check"], environment(LOG_LEVEL="info"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "System check identified no issues" in done.stdout


@pytest.mark.parametrize("missing", [("CELERY_BROKER_URL",), ("DATABASE_URL", "CHANNEL_LAYER_URL")])
def test_with_debug_off_the_three_urls_are_all_set_or_none(tmp_path, missing: tuple[str, ...]) -> None:
    """A part left unset ran on an embedded SQLite file no other process sees:
    a web process without CELERY_BROKER_URL queued tasks no worker read."""
    unset: dict[str, str | None] = dict.fromkeys(missing)
    done = setup_django(TASKLIGHT_DATA_DIR=str(tmp_path), **unset)
    assert done.returncode != 0
    assert (
        "ImproperlyConfigured: DATABASE_URL, CELERY_BROKER_URL and CHANNEL_LAYER_URL must all be set when DEBUG "
        f"is off (or none, for embedded mode); missing: {', '.join(missing)}\n"
    ) in done.stderr, done.stderr[-3000:]
    # Development may mix them; with none set, embedded mode (DEBUG on by default).
    assert setup_django(TASKLIGHT_DATA_DIR=str(tmp_path), DEBUG="1", **unset).returncode == 0
    embedded = setup_django(TASKLIGHT_DATA_DIR=str(tmp_path), DEBUG=None, SECRET_KEY=None, **dict.fromkeys(URLS))
    assert embedded.returncode == 0, embedded.stderr[-3000:]


# --- PostgreSQL's connect timeout -----------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog does) and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def test_the_release_gives_up_on_a_database_that_never_answers(silent_server: int) -> None:
    """It waited for ever: libpq has no connect timeout of its own."""
    url = f"postgres://postgres@127.0.0.1:{silent_server}/tasklight"
    # Far past the 10 s timeout, to tell a wait from a hang.
    done = run([sys.executable, "manage.py", "migrate_all", "--noinput"], environment(DATABASE_URL=url), timeout=45)
    assert done.returncode != 0
    assert "timeout" in done.stderr.lower(), done.stderr[-3000:]


def connect_timeout(url: str) -> object:
    databases = read_settings("DATABASES", DATABASE_URL=url)["DATABASES"]
    assert isinstance(databases, dict)
    return databases["default"]["OPTIONS"].get("connect_timeout")


def test_a_connect_timeout_in_the_url_wins() -> None:
    assert connect_timeout("postgres://postgres@127.0.0.1:5432/x") == 10
    assert connect_timeout("postgres://postgres@127.0.0.1:5432/x?connect_timeout=3") == 3


DEAD_PEER = {
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def database_options(url: str, **environ: str) -> dict[str, object]:
    databases = read_settings("DATABASES", DATABASE_URL=url, **environ)["DATABASES"]
    assert isinstance(databases, dict)
    return dict(databases["default"]["OPTIONS"])


@pytest.mark.parametrize("process", ["web", "worker", ""])
def test_every_postgresql_connection_ends_once_its_server_stops_answering(process: str) -> None:
    # A host that died or a partition: the kernel ends the connection
    # (docs/operations.md, "PostgreSQL that does not answer"), in every process.
    options = database_options("postgres://postgres@127.0.0.1:5432/x", TASKLIGHT_PROCESS=process)
    assert {name: options.get(name) for name in DEAD_PEER} == DEAD_PEER


def test_the_urls_dead_peer_parameters_win() -> None:
    options = database_options("postgres://postgres@127.0.0.1:5432/x?tcp_user_timeout=30000&keepalives_idle=30")
    assert {name: options.get(name) for name in DEAD_PEER} == {
        **DEAD_PEER,
        "tcp_user_timeout": 30000,
        "keepalives_idle": 30,
    }


# --- The helpers ----------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [("7", 7), (" 7 ", 7), ("+3", 3), ("0", 0), ("", 5), ("  ", 5)])
def test_whole_number_reads_integers_and_empty_as_unset(given: str, expected: int) -> None:
    assert whole_number("N", 5, minimum=0, environ={"N": given}) == expected
    assert whole_number("N", 5, minimum=0, environ={}) == 5
    assert whole_number("N", None, minimum=0, environ={}) is None


@pytest.mark.parametrize("given", ["abc", "1.5", "1e3", "1,000", "1_000", "٣", "-1", "70000"])
def test_whole_number_refuses_anything_else(given: str) -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        whole_number("PORT_X", 1, minimum=0, maximum=65535, environ={"PORT_X": given})
    assert str(refused.value) == f"PORT_X must be a whole number from 0 to 65535, not {given!r}"


@pytest.mark.parametrize(
    ("given", "expected"), [("2.5", 2.5), ("1e3", 1000.0), (".5", 0.5), ("3", 3.0), ("1.", 1.0), ("", 9.0)]
)
def test_decimal_number_reads_finite_numbers(given: str, expected: float) -> None:
    assert decimal_number("X", 9.0, minimum=0, minimum_allowed=False, environ={"X": given}) == expected


@pytest.mark.parametrize("given", ["0", "-1", "nan", "inf", "1e999", "2.5s", "1,5", "1_000", "."])
def test_decimal_number_refuses_anything_else(given: str) -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        decimal_number("X", 1.0, minimum=0, minimum_allowed=False, unit="seconds", environ={"X": given})
    assert str(refused.value) == f"X must be a number of seconds greater than 0, not {given!r}"


def test_decimal_number_bounds_are_inclusive_unless_said() -> None:
    assert decimal_number("X", 1.0, minimum=0, environ={"X": "0"}) == 0.0
    assert decimal_number("X", 1.0, minimum=0, maximum=2, environ={"X": "2"}) == 2.0
    with pytest.raises(ImproperlyConfigured, match=r"^X must be a number, 0 or more and at most 2, not '2.5'$"):
        decimal_number("X", 1.0, minimum=0, maximum=2, environ={"X": "2.5"})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        *[("1", True), ("TRUE", True), ("Yes", True), ("on", True)],
        *[("0", False), ("false", False), ("NO", False), ("off", False)],
        *[("", True), (" ", True)],
    ],
)
def test_boolean_reads_the_usual_spellings(given: str, expected: bool) -> None:
    assert boolean("B", True, environ={"B": given}) is expected


@pytest.mark.parametrize("given", ["ture", "2", "y", "enabled"])
def test_boolean_refuses_anything_else(given: str) -> None:
    with pytest.raises(
        ImproperlyConfigured, match=f"^B must be 1 or 0 \\(or true/false, yes/no, on/off\\), not '{given}'$"
    ):
        boolean("B", False, environ={"B": given})


def test_log_level_takes_any_case_and_only_known_names() -> None:
    assert log_level("L", "INFO", environ={"L": "debug"}) == "DEBUG"
    assert log_level("L", "INFO", environ={"L": ""}) == "INFO"
    with pytest.raises(ImproperlyConfigured, match=r"^L must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        log_level("L", "INFO", environ={"L": "verbose"})


def test_collectstatic_has_a_destination() -> None:
    """Platform builds (Heroku's Python buildpack) run collectstatic; without
    STATIC_ROOT it stopped with ImproperlyConfigured and failed the build."""
    from django.core.management import call_command

    call_command("collectstatic", "--noinput", "--dry-run", verbosity=0)
