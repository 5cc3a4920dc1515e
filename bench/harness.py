"""Child processes for the benchmarks: gunicorn and nginx on loopback, wrk and curl clients.

Every server runs in its own process group and is stopped (TERM, then KILL) when its context
exits, whatever happened inside it.
"""

from __future__ import annotations

import http.client
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """Something went wrong with the set-up itself (not a missed target)."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def have(tool: str) -> bool:
    """Whether a command-line tool is installed."""
    return shutil.which(tool) is not None


@dataclass(frozen=True)
class Server:
    """A running server: its URL and the process group it runs in."""

    url: str
    pgid: int


@dataclass(frozen=True)
class ServerConfig:
    """How both gunicorn servers (gateway and bare Flask) are run: identical on purpose."""

    workers: int
    threads: int

    def describe(self) -> str:
        """The gunicorn flags, as a reader would type them."""
        return f"gunicorn -k gthread -w {self.workers} --threads {self.threads} --reuse-port"


@contextmanager
def gunicorn(
    app: str, *, config: ServerConfig, env: Mapping[str, str], workdir: Path, pythonpath: str = ""
) -> Iterator[Server]:
    """Serve a WSGI app spec with gunicorn on a free loopback port."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        str(config.workers),
        "--threads",
        str(config.threads),
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        "--error-logfile",
        str(workdir / f"gunicorn-{port}.log"),
        "--timeout",
        "120",
        # One listening socket per worker, so the kernel spreads the load's connections over
        # the workers. With the one shared socket, whichever worker woke first often accepted
        # all 8 keep-alive connections and the run measured one worker on one CPU.
        "--reuse-port",
    ]
    if pythonpath:
        command += ["--pythonpath", pythonpath]
    log = workdir / f"gunicorn-{port}.log"
    with _process([*command, app], env=env, cwd=workdir, log=log) as proc:
        url = f"http://{HOST}:{port}"
        _wait_http(url + "/healthz", log, proc)
        yield Server(url, proc.pid)


NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen {host}:{port};
        location = /healthz {{ return 200 "ok"; }}
        location = /file {{ alias {file}; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Where nginx is installed (often outside a non-root PATH), or None."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@contextmanager
def nginx(file: Path, *, workers: int, workdir: Path) -> Iterator[Server]:
    """nginx in the foreground serving `file` at /file with sendfile; url is the file's."""
    binary = nginx_binary()
    if binary is None:
        raise BenchError("nginx is not installed (apt-get install nginx)")
    root = workdir / "nginx"
    root.mkdir(exist_ok=True)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "",
            workers=workers,
            root=root,
            host=HOST,
            port=port,
            file=file,
        )
    )
    log = root / "stderr.log"
    with _process([binary, "-p", str(root), "-c", str(conf)], env=None, cwd=root, log=log) as proc:
        url = f"http://{HOST}:{port}"
        _wait_http(url + "/healthz", log, proc)
        yield Server(url + "/file", proc.pid)


@contextmanager
def _process(
    command: Sequence[str], *, env: Mapping[str, str] | None, cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(command),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """TERM the child's whole process group, then KILL whatever is left after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        break
    # Grandchildren (gunicorn workers) can outlive a master killed by KILL; reap the group.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_http(url: str, log: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if fetch("GET", url).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise BenchError(f"{url} did not come up within {timeout:.0f}s\n{tail}")


def machine(*packages: str) -> str:
    """What this ran on, for the report: CPUs, RAM, system, Python and `packages`' versions."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{pages / 2**30:.1f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
        + "".join(f", {name} {version(name)}" for name in packages)
    )


def machine_busy(seconds: float = 2.0) -> float:
    """How many CPUs the whole machine kept busy over `seconds` (from /proc/stat)."""
    first = cpu_sample()
    time.sleep(seconds)
    return busy_between(first, cpu_sample())


def cpu_sample() -> list[int]:
    """The machine's CPU time counters (the first line of /proc/stat)."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def busy_between(first: list[int], second: list[int]) -> float:
    """How many CPUs the whole machine kept busy between two `cpu_sample()`s."""
    delta = [b - a for a, b in zip(first, second, strict=True)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]  # idle and iowait
    return (os.cpu_count() or 1) * (total - idle) / total


def group_cpu(pgid: int) -> tuple[float, float]:
    """User and system CPU seconds used so far by the live processes of a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after "pid (comm)": state ppid pgrp ... utime stime
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
    return user, system


@dataclass(frozen=True)
class Reply:
    """Status and headers of one response (the body is read and dropped)."""

    status: int
    headers: dict[str, str]


def fetch(method: str, url: str, headers: Mapping[str, str] | None = None) -> Reply:
    """One request over a fresh connection, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()


@dataclass(frozen=True)
class WrkResult:
    """What wrk printed: throughput, latency percentiles, and anything that went wrong."""

    rps: float
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    bad_status: int
    socket_errors: int


def wrk(url: str, *, headers: Mapping[str, str], connections: int, duration: float) -> WrkResult:
    """GET `url` with wrk (one thread, fixed connections, fixed duration)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise BenchError("wrk is not installed")
    command = [binary, "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--timeout", "30s"]
    command.append("--latency")
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> WrkResult:
    """Pull the figures out of wrk's report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if rps is None or total is None:
        raise BenchError(f"could not read wrk's report:\n{text}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=_wrk_latency(text, "50%"),
        p99_ms=_wrk_latency(text, "99%"),
        bad_status=int(bad.group(1)) if bad else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_latency(text: str, label: str) -> float | None:
    found = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    return float(found.group(1)) * UNITS_MS[found.group(2)] if found else None


def curl_download(url: str) -> tuple[int, float]:
    """Download `url` to /dev/null with curl; returns (bytes, seconds)."""
    binary = shutil.which("curl")
    if binary is None:
        raise BenchError("curl is not installed")
    done = subprocess.run(
        [
            binary,
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 3 or fields[0] != "200":
        raise BenchError(f"curl {url} failed: {done.stdout} {done.stderr.strip()[:300]}")
    return int(fields[1]), float(fields[2])
