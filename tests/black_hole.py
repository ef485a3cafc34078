"""A real network black hole for a test: a listening socket in a network
namespace of its own, reached from this machine over a veth pair, whose
packets the namespace's firewall can drop (``drop()``) and let through again
(``heal()``). Unlike ``TcpProxy.hang()``, whose kernel still acknowledges
every byte, a dropped packet is never acknowledged: the sender's TCP sees
what it sees when a host dies or a network partitions, so its retransmission
timers, keepalives and TCP_USER_TIMEOUT come into play.

It needs root, ``ip netns`` and ``iptables`` inside a namespace;
``BlackHole.create()`` raises ``Unavailable`` (its reason) when the machine
lacks them. ``tc ... netem`` would drop on the veth as well, but kernels
without the netem module (this CI's) refuse it, and the firewall is as real
a drop.

The listening socket is made on a thread that enters the namespace, and then
used from this process's own threads: a socket stays in the namespace it was
made in, so a ``TcpProxy`` on it accepts there and connects to its target
(the machine's PostgreSQL on 127.0.0.1) from the machine's namespace."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import uuid
from types import TracebackType


class Unavailable(Exception):
    """This machine cannot build a black hole; the message says why."""


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


class BlackHole:
    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.namespace = f"tl-bh-{suffix}"
        self.outer, self.inner = f"tlbh{suffix}a", f"tlbh{suffix}b"
        # A /30 of its own in 10.200.0.0/13: tests running at once do not meet.
        base = random.randrange(200, 208) << 16 | random.randrange(256) << 8 | random.randrange(0, 256, 4)
        self.outer_address = f"10.{base >> 16}.{base >> 8 & 255}.{(base & 255) + 1}"
        self.address = f"10.{base >> 16}.{base >> 8 & 255}.{(base & 255) + 2}"
        self._rules: list[list[str]] = []
        self._made: list[str] = []

    @classmethod
    def create(cls) -> BlackHole:
        if os.geteuid() != 0:
            raise Unavailable("a network namespace and its firewall need root")
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                raise Unavailable(f"no {tool} on this machine")
        hole = cls()
        try:
            hole._build()
        except BaseException:
            hole.close()
            raise
        return hole

    def _step(self, *command: str) -> None:
        done = _run(*command)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")

    def _build(self) -> None:
        self._step("ip", "netns", "add", self.namespace)
        self._made.append("namespace")
        self._step("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        self._made.append("link")
        self._step("ip", "link", "set", self.inner, "netns", self.namespace)
        self._step("ip", "addr", "add", f"{self.outer_address}/30", "dev", self.outer)
        self._step("ip", "link", "set", self.outer, "up")
        inside = ("ip", "netns", "exec", self.namespace)
        self._step(*inside, "ip", "addr", "add", f"{self.address}/30", "dev", self.inner)
        self._step(*inside, "ip", "link", "set", self.inner, "up")
        self._step(*inside, "ip", "link", "set", "lo", "up")
        self._step(*inside, "iptables", "-L", "INPUT", "-n")  # the firewall works in a namespace

    def listen(self) -> socket.socket:
        """A listening TCP socket at this namespace's address (port chosen by
        the kernel), for ``TcpProxy(..., listener=...)``."""
        made: list[socket.socket | BaseException] = []

        def inside() -> None:
            try:
                with open(f"/run/netns/{self.namespace}") as namespace:
                    os.setns(namespace.fileno(), os.CLONE_NEWNET)  # this thread only
                made.append(socket.create_server((self.address, 0), backlog=128))
            except BaseException as error:  # handed to the caller
                made.append(error)

        thread = threading.Thread(target=inside, name=f"{self.namespace}-listen")
        thread.start()
        thread.join(10)
        if not made:
            raise Unavailable("could not make a socket in the namespace")
        if isinstance(made[0], BaseException):
            raise Unavailable(f"a socket in the namespace: {made[0]}")
        return made[0]

    def drop(self, port: int) -> None:
        """Every packet to and from ``port`` in the namespace is dropped from
        now on: nothing is acknowledged, nothing answered, nothing reset."""
        for rule in (["INPUT", "-p", "tcp", "--dport", str(port)], ["OUTPUT", "-p", "tcp", "--sport", str(port)]):
            self._step("ip", "netns", "exec", self.namespace, "iptables", "-I", *rule, "-j", "DROP")
            self._rules.append(rule)

    def heal(self) -> None:
        """Packets pass again."""
        while self._rules:
            rule = self._rules.pop()
            _run("ip", "netns", "exec", self.namespace, "iptables", "-D", *rule, "-j", "DROP")

    def close(self) -> None:
        self.heal()
        if "link" in self._made:
            _run("ip", "link", "del", self.outer)  # its peer goes with it
        if "namespace" in self._made:
            _run("ip", "netns", "del", self.namespace)
        self._made.clear()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        with contextlib.suppress(Exception):
            self.close()
