"""Which addresses reach this machine only: ``make run``'s check of HOST
(tasklight/make_run.py) and the web process's answer to other clients while
DEBUG is on (tasklight/middleware.py). Loaded before Django is set up."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, ``[::1]``, or a name) is this machine's
    loopback. A name other than localhost is taken as reachable from elsewhere;
    ``::ffff:127.0.0.1`` (an IPv4 client of a dual-stack socket) is loopback."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
