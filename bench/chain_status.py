"""Benchmark what the compliance pages compute on each view of a large chain.

1. An event's inclusion-proof status (`ChainStatusService.prove`: the proof from the frontier
   of the checkpoint before the event, then verified with the public keys) against the
   baseline `airlock audit prove` builds (`prove_event`: every leaf from the first event) plus
   the same verification. The event is the last one the last checkpoint covers: the baseline's
   worst case, the page's usual one.
2. "Verify now" on the same chain: the full run (every event re-hashed, every checkpoint's
   root recomputed, as `airlock audit verify`) against the bounded one a chain past
   FULL_VERIFY_LIMIT gets (every signature, the events after the last checkpoint).

SQLite in a temporary directory: N `download:issue` events (default 100,000) with a signed
checkpoint after every 10,000 and 2,000 more after the last. Figures are printed, never asserted.

    .venv/bin/python bench/chain_status.py [--events 100000] [--every 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit import event_fields

from gateway.audit import AuditAction, AuditRecorder
from gateway.audit.notes import SigningKey
from gateway.audit.offline import verify_proof
from gateway.auth.tokens import Scope
from gateway.db.engine import Database
from gateway.db.migrate import upgrade
from gateway.db.models import Role
from gateway.services.audit_export import prove_event
from gateway.services.chain_status import ChainStatusService
from gateway.services.checkpoints import CheckpointService
from gateway.services.principal import Principal
from gateway.storage.local import LocalStorage

TAIL = 2000
OFFICER = Principal(
    user_id=1,
    username="officer",
    scopes=frozenset({Scope.AUDIT_READ}),
    roles={1: frozenset({Role.COMPLIANCE})},
)


def build(db: Database, storage: Any, key: SigningKey, *, events: int, every: int) -> None:
    """Append `events` events in batches, a checkpoint after each, then TAIL unsigned ones."""
    recorder, checkpoints = AuditRecorder(), CheckpointService()
    for start in range(0, events + TAIL, every):
        with db.session() as session:
            for n in range(start, min(start + every, events + TAIL)):
                recorder.record(session, AuditAction.DOWNLOAD_ISSUE, **event_fields(1, n))
            session.commit()
        if start + every <= events:
            with db.session() as session:
                checkpoints.create(session, signer=key, storage=storage, origin="bench")


def best(rounds: int, run: Callable[[], object]) -> float:
    """The fastest of `rounds` runs, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    officer = OFFICER
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'airlock.db'}"
        upgrade(url)
        db, storage = Database(url), LocalStorage(Path(tmp) / "blobs")
        key = SigningKey.generate("bench")
        started = time.perf_counter()
        build(db, storage, key, events=args.events, every=args.every)
        print(f"built {args.events} events in {time.perf_counter() - started:.1f} s")
        service = ChainStatusService(
            verifiers=(key.verifier(),), current=key.verifier(), storage=storage
        )
        with db.session() as session:
            latest = CheckpointService().latest(session)
            assert latest is not None
            seq = latest.tree_size

            def page() -> None:
                assert service.prove(session, principal=officer, seq=seq).verified

            def baseline() -> None:
                assert verify_proof(prove_event(session, seq), (key.verifier(),)).ok

            fast, slow = best(args.rounds, page), best(args.rounds, baseline)
            print(f"proof of event {seq} (checkpoint of {latest.tree_size}):")
            print(f"  from the previous checkpoint  {fast * 1000:8.1f} ms")
            print(f"  from the first event (prove)  {slow * 1000:8.1f} ms   {slow / fast:.1f}x")
            service.full_limit = args.events + TAIL
            full = best(1, lambda: service.verify(session, principal=officer))
            service.full_limit = TAIL  # the chain is past the limit, its tail is not
            bounded = best(args.rounds, lambda: service.verify(session, principal=officer))
            assert service.verify(session, principal=officer).ok
            print("verify now:")
            print(f"  full (every event)            {full * 1000:8.1f} ms")
            ratio = full / bounded
            print(f"  bounded (signatures + tail)   {bounded * 1000:8.1f} ms   {ratio:.1f}x")
        db.dispose()
    print(f"best of {args.rounds} rounds (full verification: one); python {sys.version[:7]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
