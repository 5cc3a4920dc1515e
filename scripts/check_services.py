"""Check that the services the tests use are reachable; name what to install or start if not."""

from __future__ import annotations

import os
import socket
import sys

SERVICES = {
    "PostgreSQL": (
        "127.0.0.1",
        5432,
        "apt-get install postgresql, then "
        "pg_ctlcluster <version> main start (trust auth, a database named 'test')",
    ),
}


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port succeeds within a second."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    """Report each service; in CI a missing one is an error, elsewhere its tests are skipped."""
    missing = [
        (name, how) for name, (host, port, how) in SERVICES.items() if not reachable(host, port)
    ]
    for name, how in missing:
        print(f"{name} is not reachable: {how}", file=sys.stderr)
    if missing and os.environ.get("CI"):
        print("CI is set: refusing to skip tests that need these services.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
