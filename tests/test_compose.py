"""docker-compose.yml runs what the Procfile says, two of each process, with
migrations once; every variable of .env.example reaches web and workers;
and a Compose client accepts it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .stack import ROOT, procfile_command

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROCESS_TYPES = {"migrate": "release", "web1": "web", "web2": "web", "worker1": "worker", "worker2": "worker"}
WEB_AND_WORKERS = ("web1", "web2", "worker1", "worker2")

# Variables of .env.example that the operator does not set for `docker compose
# up`, each with the reason. Every other one must reach web and workers.
SET_BY_COMPOSE = {
    # The file's own services; their passwords are POSTGRES_PASSWORD and RABBITMQ_PASSWORD.
    "DATABASE_URL": "the postgres service",
    "CELERY_BROKER_URL": "the rabbitmq service",
    "CHANNEL_LAYER_URL": "the redis service",
    # The published ports (WEB1_PORT, WEB2_PORT) and the health check point at 8000.
    "PORT": "8000 in every container",
}
NOT_FOR_COMPOSE = {
    # Unset, uvicorn listens on 0.0.0.0 (the Procfile's default): 127.0.0.1
    # from a developer's .env would leave the published port unanswered.
    "HOST": "uvicorn must listen on every interface of its container",
    # The three URLs are always set here: no SQLite file is ever made.
    "TASKLIGHT_DATA_DIR": "embedded mode only",
    # Set by `make run` for honcho's children; a container's process is its PID 1.
    "TASKLIGHT_STOP_WITH_PARENT": "make run only",
    # Each worker's own temporary directory is right in a container; the one
    # environment of every process would also hand it to the web processes,
    # whose prometheus_client would then write its metrics to files there.
    "PROMETHEUS_MULTIPROC_DIR": "a worker's own temporary directory",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def tasklight_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run Tasklight's image (not PostgreSQL, RabbitMQ, Redis)."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def shell_command(service: dict[str, Any]) -> str:
    """The command a service's shell runs, with Compose's `$$` escapes undone."""
    command = service["command"]
    assert isinstance(command, list) and command[:2] == ["sh", "-c"] and len(command) == 3, command
    return command[2].replace("$$", "$")


def test_each_process_runs_its_procfile_line(compose) -> None:
    services = compose["services"]
    for name, process_type in PROCESS_TYPES.items():
        # `exec`: the process itself receives the container's SIGTERM, as in tests/stack.py.
        assert shell_command(services[name]) == f"exec {procfile_command(process_type)}", name
    assert set(tasklight_services(compose)) == set(PROCESS_TYPES)


def test_it_runs_two_web_processes_and_two_named_workers(compose) -> None:
    services = tasklight_services(compose).values()
    webs = [service for service in services if "uvicorn" in shell_command(service)]
    workers = [service for service in services if "celery -A tasklight worker" in shell_command(service)]
    assert len(webs) == 2 and len(workers) == 2
    published = [port.rsplit(":", 1)[0] for web in webs for port in web["ports"]]
    assert len(published) == 2 and len(set(published)) == 2, published
    # Celery names a worker celery@<hostname>: two workers, two names.
    assert len({worker["hostname"] for worker in workers}) == 2
    for service in [*webs, *workers]:
        assert service["environment"] == compose["x-env"], "every process shares one environment"
        for variable in ("DATABASE_URL", "CELERY_BROKER_URL", "CHANNEL_LAYER_URL", "SECRET_KEY", "ALLOWED_HOSTS"):
            assert service["environment"].get(variable), variable
    for web in webs:
        assert "/readyz" in " ".join(web["healthcheck"]["test"])


def test_migrations_run_once_before_web_and_workers(compose) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert "deploy" not in migrate, "one migrate container, never replicated"
    releases = [name for name, s in tasklight_services(compose).items() if "migrate" in shell_command(s)]
    assert releases == ["migrate"]
    for name in ("web1", "web2", "worker1", "worker2"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("postgres", "rabbitmq", "redis"):
        assert services[name]["healthcheck"]["test"], name


def compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def run_config(client: list[str], env_file: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    # Only these variables: neither this shell's nor a developer's .env file
    # (which Compose would read) may decide the outcome.
    env = {"PATH": os.environ["PATH"], "HOME": str(env_file.parent), **variables}
    return subprocess.run(
        [*client, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_compose_client_accepts_the_file(tmp_path: Path) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no Compose client: neither `docker compose` nor `docker-compose` is installed")
    no_variables = tmp_path / "empty.env"
    no_variables.write_text("")
    result = run_config(client, no_variables, SECRET_KEY="a-secret-for-validation-only")
    assert result.returncode == 0, result.stderr
    # Without a SECRET_KEY it refuses to start anything, and says why.
    refused = run_config(client, no_variables)
    assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr, refused.stderr


def documented_variables() -> list[str]:
    """Every variable .env.example lists, set (`NAME=`) or commented (`# NAME=`)."""
    names = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.append(match.group(1))
    return names


def takes_from_the_operator(name: str, value: object) -> bool:
    """Whether an `environment` entry hands the container the operator's value:
    passed through (no value: the shell's or .env's, unset if neither) or
    interpolated (`${NAME}`, `${NAME:-default}`; `$${NAME}` is a literal)."""
    if value is None:
        return True
    return isinstance(value, str) and re.search(r"(?<!\$)\$\{" + name + r"(?:[:?-]|\})", value) is not None


def test_every_variable_of_env_example_reaches_web_and_workers(compose) -> None:
    documented = documented_variables()
    assert len(documented) > 40 and "FORWARDED_ALLOW_IPS" in documented, documented
    excluded = SET_BY_COMPOSE.keys() | NOT_FOR_COMPOSE.keys()
    assert excluded <= set(documented), "an exclusion .env.example no longer lists"
    for service_name in WEB_AND_WORKERS:
        environment = compose["services"][service_name]["environment"]
        unreachable = [
            name
            for name in documented
            if name not in excluded and not (name in environment and takes_from_the_operator(name, environment[name]))
        ]
        assert not unreachable, f"{service_name} never sees {unreachable}: pass them through in x-env"
        for name in SET_BY_COMPOSE:
            assert environment.get(name), (service_name, name)
        for name in NOT_FOR_COMPOSE:
            assert name not in environment, (service_name, name)


def test_a_compose_client_hands_the_operators_env_file_to_web_and_workers(tmp_path: Path) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no Compose client: neither `docker compose` nor `docker-compose` is installed")
    passed = [name for name in documented_variables() if name not in SET_BY_COMPOSE.keys() | NOT_FOR_COMPOSE.keys()]
    # As the operator's .env next to docker-compose.yml, which Compose reads by itself.
    operators_env = tmp_path / "operator.env"
    operators_env.write_text("".join(f"{name}=set-{name.lower()}\n" for name in passed))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    result = subprocess.run(
        [*client, "--env-file", str(operators_env), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for service_name in WEB_AND_WORKERS:
        environment = services[service_name]["environment"]
        missing = [name for name in passed if f"set-{name.lower()}" not in str(environment.get(name))]
        assert not missing, f"{service_name} does not get {missing} from .env"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, as (INSTRUCTION, arguments), continued lines joined."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    instructions = []
    for instruction in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        if instruction.strip():
            keyword, _, arguments = instruction.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def test_the_image_gives_its_user_the_embedded_data_directory() -> None:
    # With a URL unset, the settings create DATA_DIR (BASE_DIR/data, BASE_DIR
    # being the WORKDIR the source is copied to) and write SQLite files there:
    # the source belongs to root, the process runs as USER.
    instructions = dockerfile_instructions()
    workdir = next(arguments for keyword, arguments in instructions if keyword == "WORKDIR")
    user = [arguments for keyword, arguments in instructions if keyword == "USER"][-1]
    data_dir = f"{workdir.rstrip('/')}/data"
    runs = " && ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    made = re.search(rf"install -d (?:-\S+ \S+ )*-o {user} (?:-\S+ \S+ )*{data_dir}\b", runs) or (
        re.search(rf"mkdir (?:-p )?{data_dir}\b", runs) and re.search(rf"chown (?:-R )?{user}\S* {data_dir}\b", runs)
    )
    assert made, f"no RUN makes {data_dir} for {user}: {runs}"
    # A developer's own data/ stays out of the image (and out of root's hands).
    assert "data" in (ROOT / ".dockerignore").read_text().split()
