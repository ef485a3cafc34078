"""``tasklight``: log in, list the workloads, queue one and follow it live, list tasks, cancel (docs/cli.md)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from . import __version__
from .api import Api, normalise_server
from .config import DEFAULT_SERVER, Config, ConfigError, Credentials, config_path
from .errors import CliError, Exit
from .live import ProgressBar, follow
from .schema import describe


def server_address(args: argparse.Namespace, config: Config) -> str:
    """--server, then TASKLIGHT_URL, then the server last logged in to, then the default."""
    address = args.server or os.environ.get("TASKLIGHT_URL") or config.default_server or DEFAULT_SERVER
    return normalise_server(address)


def signed_in_api(args: argparse.Namespace) -> Api:
    config = Config.load()
    server = server_address(args, config)
    token = os.environ.get("TASKLIGHT_TOKEN")
    if not token:
        credentials = config.servers.get(server)
        if credentials is None:
            raise CliError(f"not logged in to {server}: run `tasklight login` (or set TASKLIGHT_TOKEN)", Exit.AUTH)
        return Api(server, credentials.token)
    # Logging in again stores a token, which this variable overrides: it cannot help.
    return Api(server, token, refused_advice="TASKLIGHT_TOKEN is refused: unset it or replace it.")


def sendable(value: Any) -> bool:
    """Whether httpx can send ``value`` as JSON. NaN, Infinity and 1e400 (inf) parse
    as Python floats but are not JSON; a lone surrogate (from bytes in the command
    line that are not UTF-8, or a JSON escape) cannot be encoded as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def utf8(value: str) -> str:
    """An argument that can be sent: not bytes of another encoding (a lone surrogate in Python)."""
    if not sendable(value):
        raise argparse.ArgumentTypeError(f"not valid UTF-8: {value!r}")
    return value


def json_or_text(raw: str) -> Any:
    """The value as JSON when it parses (2, true, [1,2], "quoted"), else the string itself."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python reads
        return raw
    return value if sendable(value) else raw


class ParamReader:
    """The type of ``--param``: ``NAME=VALUE``, the value as JSON when it parses,
    else the string itself; ``NAME=@PATH`` is the text of a file and ``NAME=@-``
    that of standard input, exactly as read (on Linux one argument cannot be
    longer than 128 KiB). A text that starts with ``@`` is quoted as JSON:
    ``NAME='"@alice"'``."""

    def __init__(self) -> None:
        self.stdin_read_for: str | None = None

    def __call__(self, param: str) -> tuple[str, Any]:
        name, equals, raw = param.partition("=")
        from_file = raw.startswith("@")
        utf8(name if from_file else param)  # a file's name may be bytes of any encoding
        if not equals or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {param!r}")
        name = name.strip()
        if from_file:
            return name, self.read(name, raw[1:])
        return name, json_or_text(raw)

    def read(self, name: str, path: str) -> str:
        if not path:
            raise argparse.ArgumentTypeError(
                f"expected a file name after {name}=@ (@- for standard input); "
                f"a text that starts with @ is quoted as JSON: {name}='\"@...\"'"
            )
        where = "standard input" if path == "-" else repr(path)
        try:
            if path != "-":
                with open(path, "rb") as handle:
                    data = handle.read()
            elif self.stdin_read_for is not None:
                raise argparse.ArgumentTypeError(f"standard input is read once, for {self.stdin_read_for} already")
            elif sys.stdin is None:  # started with its standard input closed
                raise argparse.ArgumentTypeError(f"no standard input to read for {name}")
            else:
                self.stdin_read_for = name
                data = sys.stdin.buffer.read()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {where} for {name}: {exc.strerror or exc}") from None
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise argparse.ArgumentTypeError(
                f"{where} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); {name} is sent as UTF-8"
            ) from None


def task_id(value: str) -> str:
    """A task id is a UUID: anything else would make another URL (``.`` is the list of tasks)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a task id (a UUID, as `tasklight list` shows), got {value!r}"
        ) from None


def page_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= 500:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 500, got {text!r}")
    return size


# Commands


def ask(prompt: Callable[[str], str], question: str, what: str) -> str:
    """The answer to a prompt at the terminal; Ctrl-D (end of input) is no answer."""
    try:
        return prompt(question)
    except EOFError:
        print(file=sys.stderr)  # end the prompt's line
        raise CliError(f"no {what} given", Exit.USAGE) from None


def login(args: argparse.Namespace) -> int:
    config = Config.load()
    server = server_address(args, config)
    username = args.username
    if not username:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the username: pass --username", Exit.USAGE)
        username = ask(input, "Username: ", "username").strip()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the password: pass --password-stdin", Exit.USAGE)
        password = ask(getpass.getpass, f"Password for {username} on {server}: ", "password")
    if not password:
        raise CliError("no password given", Exit.USAGE)
    with Api(server) as api:
        token = api.issue_token(username, password)
    config.servers[server] = Credentials(username=username, token=token)
    config.default_server = server
    config.save()
    print(f"Logged in to {server} as {username}.")
    if os.environ.get("TASKLIGHT_TOKEN"):
        print("Note: TASKLIGHT_TOKEN is set and takes precedence over this login.", file=sys.stderr)
    return Exit.OK


def logout(args: argparse.Namespace) -> int:
    config = Config.load()
    server = server_address(args, config)
    credentials = config.servers.get(server)
    if credentials is None:
        print(f"Not logged in to {server}.", file=sys.stderr)
        return Exit.OK
    outcome = ""
    if args.revoke:
        # Revoking ends the user's token everywhere: every script and machine using it.
        with Api(server, credentials.token) as api:
            try:
                api.revoke_token()
                outcome = " and revoked the token"
            except CliError as error:
                if error.code != Exit.AUTH:
                    raise
                # The server no longer takes the token: it was revoked already (elsewhere).
                outcome = "; the server had already revoked the token"
    del config.servers[server]
    if config.default_server == server:
        config.default_server = None
    config.save()
    print(f"Logged out of {server}{outcome}.")
    return Exit.OK


def finished(task: dict[str, Any]) -> int:
    """Prints a finished task's outcome: the result on stdout, or the error on stderr."""
    if task["status"] == "succeeded":
        print(json.dumps(task.get("result"), indent=2, ensure_ascii=False))
        return Exit.OK
    reason = task.get("error") or task["status"]
    print(f"tasklight: task {task['id']} {task['status']}: {' '.join(str(reason).split())}", file=sys.stderr)
    return Exit.TASK_FAILED


def run_following(api: Api, start: Any) -> int:
    bar = ProgressBar(sys.stderr)
    task: dict[str, Any] = {}

    def remembering_start() -> dict[str, Any]:
        task.update(start())
        return task

    try:
        final = follow(api, remembering_start, bar)
    except KeyboardInterrupt:
        bar.close()
        if task:
            print(f"tasklight: stopped waiting; the task goes on: tasklight wait {task['id']}", file=sys.stderr)
        return Exit.INTERRUPTED
    except CliError as error:
        if not task:
            raise
        # Whatever ended the wait, the task exists and runs on: say how to find it again.
        goes_on = f"Stopped waiting; the task goes on: tasklight wait {task['id']}"
        raise CliError(f"{error.message.rstrip('.')}. {goes_on}", error.code) from None
    finally:
        bar.close()
    return finished(final)


def submit(args: argparse.Namespace) -> int:
    params = dict(args.param)
    with signed_in_api(args) as api:
        if not args.wait:
            task = api.submit(args.kind, params)
            print(task["id"])
            return Exit.OK
        return run_following(api, lambda: api.submit(args.kind, params))


def wait(args: argparse.Namespace) -> int:
    with signed_in_api(args) as api:
        return run_following(api, lambda: api.task(args.id))


def show_time(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def list_tasks(args: argparse.Namespace) -> int:
    with signed_in_api(args) as api:
        tasks = api.tasks(args.limit)
    if args.json:
        print(json.dumps(tasks, indent=2, ensure_ascii=False))
        return Exit.OK
    if not tasks:
        print("No tasks yet.", file=sys.stderr)
        return Exit.OK
    rows = [("ID", "KIND", "STATUS", "PROGRESS", "CREATED")]
    for task in tasks:
        progress = "-" if task.get("progress") is None else f"{task['progress']}%"
        rows.append((task["id"], task["kind"], task["status"], progress, show_time(task.get("created_at"))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return Exit.OK


def list_workloads(args: argparse.Namespace) -> int:
    # The list is public: no login needed, and no token sent (a stale one would be refused).
    with Api(server_address(args, Config.load())) as api:
        workloads = api.workloads()
    if args.json:
        print(json.dumps(workloads, indent=2, ensure_ascii=False))
        return Exit.OK
    if not workloads:
        print("The server runs no workloads.", file=sys.stderr)
        return Exit.OK
    for line in describe(workloads):
        print(line)
    return Exit.OK


def cancel(args: argparse.Namespace) -> int:
    with signed_in_api(args) as api:
        task = api.cancel(args.id)
    if task["status"] == "cancelled":
        print(f"Cancelled {task['id']}.")
    else:
        print(f"Asked {task['id']} to stop; it is {task['status']} and ends as cancelled shortly.")
    return Exit.OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tasklight",
        description="Queue Tasklight workloads and follow them live.",
        epilog=f"Server: --server, else TASKLIGHT_URL, else the last one logged in to, else {DEFAULT_SERVER}. "
        f"Tokens are kept in {config_path()}; TASKLIGHT_TOKEN overrides them.",
    )
    top.add_argument("--server", metavar="URL", help="the Tasklight server, e.g. https://tasklight.example.com")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser("login", help="get an API token with your username and password, and keep it")
    command.add_argument("--username", "-u", type=utf8)
    command.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    command.set_defaults(run=login)

    command = commands.add_parser("logout", help="forget the token kept for the server")
    command.add_argument("--revoke", action="store_true", help="also revoke the token on the server, for every client")
    command.set_defaults(run=logout)

    command = commands.add_parser("submit", help="queue a task; with --wait, follow it to its end")
    command.add_argument("kind", metavar="KIND", type=utf8, help="a workload name, as `tasklight workloads` lists them")
    command.add_argument(
        "--param",
        "-p",
        metavar="NAME=VALUE",
        action="append",
        type=ParamReader(),
        default=[],
        help='a parameter; VALUE is read as JSON when it parses (2, true, "text"), else as a string '
        "(NaN and Infinity too). NAME=@FILE sends the text of FILE, NAME=@- that of standard input; "
        """a text that starts with @ is quoted as JSON: NAME='"@..."'. Repeatable.""",
    )
    command.add_argument(
        "--wait",
        "-w",
        action="store_true",
        help="show live progress on stderr, print the result on stdout, exit non-zero if the task fails",
    )
    command.set_defaults(run=submit)

    command = commands.add_parser("wait", help="follow a task already queued to its end, like submit --wait")
    command.add_argument("id", metavar="ID", type=task_id)
    command.set_defaults(run=wait)

    command = commands.add_parser("list", help="your recent tasks, newest first")
    command.add_argument(
        "--limit", "-n", type=page_size, default=20, metavar="N", help="how many, 1 to 500 (default 20)"
    )
    command.add_argument("--json", action="store_true", help="print the tasks as JSON")
    command.set_defaults(run=list_tasks)

    command = commands.add_parser(
        "workloads", help="the workloads the server runs, with their parameters (no login needed)"
    )
    command.add_argument("--json", action="store_true", help="print them as JSON, as GET /api/workloads/ returns them")
    command.set_defaults(run=list_workloads)

    command = commands.add_parser("cancel", help="cancel a queued or running task")
    command.add_argument("id", metavar="ID", type=task_id)
    command.set_defaults(run=cancel)
    return top


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while a parameter's text is typed at the terminal (NAME=@-)
        print(file=sys.stderr)
        return int(Exit.INTERRUPTED)
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return code
    except BrokenPipeError:
        # The reader went away (`tasklight list | head -1`): stop quietly, as Unix tools do,
        # and point both streams at /dev/null so that nothing else tries to write to the pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return int(Exit.BROKEN_PIPE)
    except CliError as error:
        print(f"tasklight: {error.message}", file=sys.stderr)
        return int(error.code)
    except ConfigError as error:
        print(f"tasklight: {error}", file=sys.stderr)
        return int(Exit.USAGE)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return int(Exit.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
