"""A small closed-loop HTTP/1.1 load generator for HEAD (wrk cannot: it waits for a HEAD body)
and for POSTs of a fixed small body.

Each process drives a fixed number of keep-alive connections with non-blocking sockets and one
request in flight per connection, like wrk; it stops by itself at a deadline.
"""

from __future__ import annotations

import multiprocessing
import selectors
import signal
import socket
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HEADER_END = b"\r\n\r\n"


@dataclass
class _Conn:
    sock: socket.socket
    sent_at: float = 0.0
    buffer: bytes = b""


@dataclass
class LoadResult:
    """Requests completed in the measured window, per status, with latency percentiles."""

    duration: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def requests(self) -> int:
        """Completed requests of any status."""
        return sum(self.statuses.values())

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration if self.duration else 0.0

    def percentile_ms(self, q: float) -> float | None:
        """Latency at quantile q (0..1) in milliseconds."""
        if len(self.latencies) < 2:
            return None
        cuts = statistics.quantiles(self.latencies, n=1000, method="inclusive")
        return cuts[min(len(cuts) - 1, max(0, round(q * 1000) - 1))] * 1000


def request_bytes(
    method: str, url: str, headers: Mapping[str, str], body: bytes = b""
) -> tuple[str, int, bytes]:
    """Host, port and the raw request (with its body, if any) to send over and over."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: airlock-bench"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def run(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    connections: int,
    duration: float,
    processes: int = 1,
    body: bytes = b"",
) -> LoadResult:
    """Send `method url` over `connections` connections (split over processes) for `duration`."""
    host, port, raw = request_bytes(method, url, headers, body)
    start_at = time.time() + 0.5 + 0.1 * processes
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(host, port, raw, method == "HEAD", n, start_at, duration, queue),
            daemon=True,
        )
        for n in share
        if n
    ]
    for worker in workers:
        worker.start()
    try:
        parts = [queue.get(timeout=duration + 60) for _ in workers]
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
    total = LoadResult(duration=duration)
    for statuses, latencies, errors in parts:
        total.statuses.update(statuses)
        total.latencies.extend(latencies)
        total.errors += errors
    return total


def _worker(
    host: str,
    port: int,
    raw: bytes,
    head: bool,
    count: int,
    start_at: float,
    duration: float,
    queue: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sel = selectors.DefaultSelector()
    conns = [_connect(sel, host, port) for _ in range(count)]
    time.sleep(max(0.0, start_at - time.time()))
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration
    for conn in conns:
        _send(conn, raw)
    while time.perf_counter() < deadline:
        for key, _ in sel.select(timeout=0.2):
            conn = key.data
            try:
                data = conn.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                errors += 1
                conn = _reconnect(sel, conn, host, port)
                conns.append(conn)
                _send(conn, raw)
                continue
            conn.buffer += data
            done = _complete(conn, head)
            if done is None:
                continue
            status, close = done
            now = time.perf_counter()
            if now <= deadline:
                statuses[status] += 1
                latencies.append(now - conn.sent_at)
            if close:
                conn = _reconnect(sel, conn, host, port)
                conns.append(conn)
            _send(conn, raw)
    for conn in conns:
        conn.sock.close()
    queue.put((statuses, latencies, errors))


def _connect(sel: selectors.BaseSelector, host: str, port: int) -> _Conn:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    conn = _Conn(sock)
    sel.register(sock, selectors.EVENT_READ, conn)
    return conn


def _reconnect(sel: selectors.BaseSelector, conn: _Conn, host: str, port: int) -> _Conn:
    sel.unregister(conn.sock)
    conn.sock.close()
    return _connect(sel, host, port)


def _send(conn: _Conn, raw: bytes) -> None:
    # The previous response was read in full, so the send buffer is empty: one send suffices.
    conn.sent_at = time.perf_counter()
    if conn.sock.send(raw) != len(raw):
        raise OSError("short send of a small request")


def _complete(conn: _Conn, head: bool) -> tuple[int, bool] | None:
    """(status, server closes) once a whole response is buffered; the buffer is consumed."""
    end = conn.buffer.find(HEADER_END)
    if end < 0:
        return None
    header = conn.buffer[:end].lower()
    length = 0
    if not head:
        marker = header.find(b"\r\ncontent-length:")
        if marker >= 0:
            eol = header.find(b"\r\n", marker + 2)  # -1 when it is the last header line
            length = int(header[marker + 17 : eol if eol >= 0 else len(header)].strip() or 0)
    need = end + 4 + length
    if len(conn.buffer) < need:
        return None
    conn.buffer = conn.buffer[need:]
    return int(header[9:12]), b"\r\nconnection: close" in header
