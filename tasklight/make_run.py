"""`make run`: the checks before it starts anything, then honcho.

``PORT=N python -m tasklight.make_run`` (the Makefile's run target) refuses,
with one line and before anything starts:

- a PORT (``.env``'s first, as honcho has it) that is not 1 to 65535;
- DEBUG pages beyond loopback: with ``HOST`` not a loopback address, only
  with ``DEBUG`` off. Django's DEBUG pages show tracebacks and settings
  (and a ``Host`` outside ``ALLOWED_HOSTS`` gets one too).
- a second run on the same data directory: the first's SQLite database,
  broker and channel layer would be shared by two web processes and two
  workers. Every process of a run holds a shared ``flock`` on
  ``make-run.lock`` there (honcho, exec'd from here, the lock it is given;
  the web process and the worker their own, tasklight/parent.py); a new run
  starts only if it can take it exclusively, that is once every process of
  the last one has ended. The kernel drops a dead process's lock: a run
  killed with SIGKILL leaves nothing stale.

Then it migrates (the run's lock held) and execs honcho, which starts the
Procfile's web and worker.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

from tasklight.addresses import is_loopback
from tasklight.parent import LOCK_VARIABLE, process_exists

LOCK_FILE = "make-run.lock"
DEFAULT_HOST = "127.0.0.1"


class Refused(Exception):
    """This run must not start; the message says why."""


def _every_address(host: str) -> bool:
    """0.0.0.0 or ::, every address of this machine, loopback included."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def check_debug_pages(host: str, debug: bool) -> None:
    if debug and not is_loopback(host):
        raise Refused(
            f"HOST={host} would show make run's DEBUG pages (tracebacks, settings) to the network: "
            "leave HOST unset (127.0.0.1), or set DEBUG=0 with SECRET_KEY, HTTPS=0 and ALLOWED_HOSTS "
            "(docs/operations.md#make-run-on-the-network)."
        )


def claim(data_dir: Path, *, url: str) -> int:
    """Takes ``data_dir`` for this run: returns the descriptor of its lock,
    held shared and inheritable (exec keeps it), or raises Refused naming
    the run that holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Two runs starting at once take turns on the directory itself: flock's
    # change from exclusive to shared is not atomic, and the other's
    # exclusive try would find the lock free in between.
    gate = os.open(data_dir, os.O_RDONLY)
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        lock = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock, 1000, 0).decode(errors="replace").split()
            os.close(lock)
            raise Refused(_already_running(data_dir, holder)) from None
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()} {url}\n".encode(), 0)
        fcntl.flock(lock, fcntl.LOCK_SH)
    finally:
        os.close(gate)
    os.set_inheritable(lock, True)
    return lock


def _already_running(data_dir: Path, holder: list[str]) -> str:
    pid, url = (int(holder[0]), holder[1]) if len(holder) == 2 and holder[0].isdigit() else (None, "")
    if pid is not None and process_exists(pid):
        return (
            f"make run is already running on {data_dir} (pid {pid}, {url}): stop it first (Ctrl-C), "
            "or give this one another TASKLIGHT_DATA_DIR."
        )
    # honcho is gone, a process it started is not yet (a worker finishing its tasks).
    was = f" (pid {pid}, {url})" if pid is not None else ""
    return f"A process of the make run that stopped on {data_dir}{was} is still running: wait for it to end."


def _honcho_environment(root: Path) -> None:
    """Applies ``.env`` as honcho will for the processes it starts: its
    values win over the environment's (django-environ's reading is the other
    way round), so the checks see what web and worker will."""
    from honcho.environ import parse

    env_file = root / ".env"
    if env_file.is_file():
        os.environ.update(parse(env_file.read_text()))


def port_from(text: str) -> int | None:
    """A TCP port a server can listen on, 1 to 65535 (0 would be any)."""
    return int(text) if re.fullmatch(r"[0-9]{1,5}", text) and 1 <= int(text) <= 65535 else None


def main() -> int:
    root = Path.cwd()
    _honcho_environment(root)
    text = os.environ.get("PORT", "")
    port = port_from(text)
    if port is None:
        print(f"PORT must be a number from 1 to 65535, not '{text}'.", file=sys.stderr)
        return 2
    host = os.environ.get("HOST", "").strip() or DEFAULT_HOST
    os.environ["HOST"] = host
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasklight.settings")
    from django.conf import settings

    # 0.0.0.0 and :: serve loopback too; the banner gives an address to open.
    shown = DEFAULT_HOST if _every_address(host) else host
    url = f"http://{f'[{shown}]' if ':' in shown and not shown.startswith('[') else shown}:{port}/"
    try:
        check_debug_pages(host, settings.DEBUG)
        # A run on servers only (the three URLs set) has no files to share.
        if settings.USES_DATA_DIR:
            # Left open: through exec, honcho holds it.
            claim(Path(settings.DATA_DIR), url=url)
            os.environ[LOCK_VARIABLE] = str(Path(settings.DATA_DIR) / LOCK_FILE)
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    migrated = subprocess.run([sys.executable, "manage.py", "migrate_all", "--noinput"], cwd=root, check=False)
    if migrated.returncode != 0:
        return migrated.returncode
    print(f"Tasklight on {url}  (Ctrl-C stops it)", flush=True)
    os.environ["TASKLIGHT_STOP_WITH_PARENT"] = "1"
    honcho = str(Path(sys.executable).parent / "honcho")
    os.execv(honcho, [honcho, "start", "--port", str(port), "web", "worker"])  # noqa: S606  # our own honcho
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
