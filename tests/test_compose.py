"""docker-compose.yml runs what the Procfile says, two of each process, with
migrations once; and a Compose client accepts it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .stack import ROOT, procfile_command

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROCESS_TYPES = {"migrate": "release", "web1": "web", "web2": "web", "worker1": "worker", "worker2": "worker"}


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
