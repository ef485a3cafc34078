"""A TCP proxy that a test can cut: a service "goes down" for one process
without stopping the machine's shared PostgreSQL, RabbitMQ or Redis. It goes
down in one of two ways: ``pause()`` resets every connection (a server that
stopped, or a connection killed), ``hang()`` answers nothing at all (a host
that died or a network partition: connections are taken, nothing comes
back, and no reset says so)."""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

import httpx

# SO_LINGER with a zero timeout: close() sends a reset, as when the server dies.
ABORT_ON_CLOSE = struct.pack("ii", 1, 0)


class _Link:
    """One client connection and its upstream connection, pumped both ways by
    two threads; the second thread to finish closes both sockets."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self._lock = threading.Lock()
        self._running = 2
        # Hung: whatever either side sends is dropped, as a black hole does.
        self.hung = False

    def start(self, on_done: Callable[[_Link], None]) -> None:
        client, upstream = self.sockets
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink, on_done), daemon=True).start()

    def cut(self) -> None:
        """Wakes both pumps; their sockets then close with a reset."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _pump(self, source: socket.socket, sink: socket.socket, on_done: Callable[[_Link], None]) -> None:
        try:
            while data := source.recv(65536):
                if not self.hung:
                    sink.sendall(data)
        except OSError:
            pass  # the other side, or cut(), ended the connection
        # Wake the other pump: a half-closed connection would leave it waiting.
        for sock in (sink, source):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in self.sockets:
                sock.close()
            on_done(self)


class TcpProxy:
    """Forwards 127.0.0.1:<port> (or ``listener``'s address) to ``target``. ``pause()`` resets every live
    connection, and every new one until ``resume()``. ``hang()`` makes every
    live connection drop what it carries, and takes new ones without ever
    answering them; ``resume()`` then resets those connections, as a host
    that comes back (rebooted, or the partition healed after the client's
    TCP gave up) knows nothing of them, and forwards new ones again."""

    def __init__(self, target_host: str, target_port: int, listener: socket.socket | None = None) -> None:
        self.target = (target_host, target_port)
        self._paused = threading.Event()
        self._hanging = threading.Event()
        # Connections taken while hanging, never answered.
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        # Connections forwarded so far: proof that a client really goes through.
        self.forwarded = 0
        # A listening socket of the caller's: one in a network namespace of
        # its own, whose packets can be dropped (tests/black_hole.py).
        self._listener = listener or socket.create_server(("127.0.0.1", 0), backlog=128)
        self.host: str
        self.host, self.port = self._listener.getsockname()[:2]
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        scheme, _, rest = url.partition("://")
        credentials, at, location = rest.rpartition("@")
        _, slash, path = location.partition("/")
        return f"{scheme}://{credentials}{at}{self.host}:{self.port}{slash}{path}"

    @property
    def live_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def pause(self) -> None:
        with self._lock:
            self._paused.set()
            links = list(self._links)
        for link in links:
            link.cut()

    def hang(self) -> None:
        with self._lock:
            self._hanging.set()
            for link in self._links:
                link.hung = True

    def resume(self) -> None:
        with self._lock:
            self._paused.clear()
        self._let_go()

    def _let_go(self) -> None:
        """Resets what hang() held, and stops hanging."""
        with self._lock:
            self._hanging.clear()
            hung = [link for link in self._links if link.hung]
            held, self._held = self._held, []
        for link in hung:
            link.cut()
        for sock in held:
            _abort(sock)

    def close(self) -> None:
        self._closed.set()
        self.pause()
        self._let_go()
        self._thread.join(5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                if self._hanging.is_set():
                    self._held.append(client)
                    continue
            if self._paused.is_set():
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _abort(client)
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                if self._paused.is_set():
                    _abort(client)
                    _abort(upstream)
                    continue
                link.hung = self._hanging.is_set()  # hang() came while it connected
                self._links.add(link)
                self.forwarded += 1
            link.start(self._forget)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)
    sock.close()


# Headers that concern one connection, not the request: a proxy does not pass them on.
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")
)


class HttpProxyWithoutWebSockets:
    """An HTTP reverse proxy in front of ``target`` (``http://host:port``)
    that does not pass WebSockets, as nginx without the ``Upgrade`` lines of
    docs/operations.md: each request goes on as plain HTTP, the ``Host`` kept,
    the ``Upgrade`` and ``Connection`` headers dropped. A WebSocket handshake
    gets whatever the server answers a plain GET of its path."""

    def __init__(self, target: str) -> None:
        upstream = httpx.Client(base_url=target, timeout=30, follow_redirects=False)
        self.forwarded: list[str] = []
        forwarded = self.forwarded

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = [(name, value) for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP]
                forwarded.append(f"{self.command} {self.path}")
                answer = upstream.request(self.command, self.path, headers=headers, content=body)
                self.send_response(answer.status_code)
                for name, value in answer.headers.multi_items():
                    if name.lower() not in HOP_BY_HOP | {"content-length", "content-encoding"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = forward

            def log_message(self, *args: object) -> None:
                pass

        self._upstream = upstream
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> HttpProxyWithoutWebSockets:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()
