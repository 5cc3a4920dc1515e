"""Small facts about sockets the gateway keeps open between uses."""

from __future__ import annotations

import select
from typing import Any


def readable_while_idle(sock: Any) -> bool:
    """Whether a pooled connection's socket (or descriptor) has something to read while no
    request is out on it: the peer closed it, reset it or said goodbye, since a server sends
    nothing unasked. poll(), not select(): a busy process's descriptors pass 1024. A socket
    that cannot be polled counts as readable (unusable)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
