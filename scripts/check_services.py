"""Check that the services the tests use are reachable; name what to install or start if not."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

SERVICES = {
    "PostgreSQL": (
        "127.0.0.1",
        5432,
        "apt-get install postgresql, then "
        "pg_ctlcluster <version> main start (trust auth, a database named 'test')",
    ),
    "Redis": (
        "127.0.0.1",
        6379,
        "apt-get install redis-server, then "
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
    ),
}
# The database-restart test runs a private cluster of its own with these binaries.
SERVER_BINARIES = ("initdb", "pg_ctl")
# Programs tests run as real peers: deploy/nginx.conf is checked by the nginx it is written for.
# The browser tests drive Debian's Chromium through Playwright (no browser download).
TOOLS = {"nginx": "apt-get install nginx-light", "chromium": "apt-get install chromium"}


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port succeeds within a second."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def has_server_binaries() -> bool:
    """Whether PostgreSQL's initdb and pg_ctl are installed (Debian layout, or on PATH)."""
    for bin_dir in Path("/usr/lib/postgresql").glob("*/bin"):
        if all((bin_dir / name).exists() for name in SERVER_BINARIES):
            return True
    return all(shutil.which(name) for name in SERVER_BINARIES)


def main() -> int:
    """Report each service; in CI a missing one is an error, elsewhere its tests are skipped."""
    missing = [
        (name, how) for name, (host, port, how) in SERVICES.items() if not reachable(host, port)
    ]
    if not has_server_binaries():
        missing.append(
            ("PostgreSQL server binaries (initdb, pg_ctl)", "apt-get install postgresql")
        )
    missing += [
        (tool, how)
        for tool, how in TOOLS.items()
        if not shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    ]
    for name, how in missing:
        print(f"{name}: missing or not reachable. {how}", file=sys.stderr)
    if missing and os.environ.get("CI"):
        print("CI is set: refusing to skip tests that need these services.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
