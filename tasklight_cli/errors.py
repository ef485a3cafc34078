"""Exit codes and the one-line errors the CLI prints instead of tracebacks."""

from __future__ import annotations

import errno
import socket
import ssl
from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    TASK_FAILED = 1  # the task ended failed or cancelled
    USAGE = 2  # bad arguments (argparse uses 2 as well), or a server address that redirects elsewhere
    UNREACHABLE = 3  # no answer, a server error (5xx), an answer not Tasklight's, or the socket lost for good
    AUTH = 4  # not logged in, or the token was refused
    REFUSED = 5  # the API refused the request (400, 404, 409, 413, 422, 429)
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
    BROKEN_PIPE = 141  # stdout closed early (`| head`), as shells report SIGPIPE


class CliError(Exception):
    """Printed as ``tasklight: <message>`` on one line; the process exits with ``code``.
    ``status`` is the HTTP status when the API refused a request."""

    def __init__(self, message: str, code: Exit, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def describe_connection_error(exc: BaseException) -> str:
    """A short reason for a failed connection: "connection refused", "timed out", ..."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, ssl.SSLError):
            return f"TLS error: {current.reason or current}"
        if isinstance(current, socket.gaierror):
            return "unknown host"
        if isinstance(current, OSError) and current.errno is not None:
            if current.errno == errno.ECONNREFUSED:
                return "connection refused"
            return (current.strerror or str(current)).lower()
        current = current.__cause__ or current.__context__
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__
