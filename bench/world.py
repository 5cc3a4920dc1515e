"""A seeded demo deployment to benchmark: the demo world, a bench policy, and a large file.

Everything goes through the services, as `airlock demo` does, so the signed URLs and grants
the benchmark uses are real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.db.migrate import upgrade
from gateway.demo import REPO, demo_policy, seed
from gateway.services.container import Airlock, build_airlock
from gateway.services.publishing import ManifestEntry
from gateway.settings import Settings, load_settings

WEIGHTS_TIER = "weights-vetted"
BIG_FILE = "bench-1gib.safetensors"
SMALL_FILE = "config.json"
# Far above what a benchmark run can use, so every request takes the allow path: the limiter
# is still consulted and charged on each GET, it just never refuses. The benchmark never follows
# its redirects, so every GET's concurrency lease stays held until its signed URL expires.
BENCH_LIMITS = {
    "downloads_per_day": 10**12,
    "bytes_per_day": 10**18,
    "concurrent_downloads": 10**9,
}


@dataclass(frozen=True)
class World:
    """A seeded data dir and what the benchmark needs from it."""

    env: dict[str, str]
    settings: Settings
    researcher_token: str
    big_file: Path | None

    def resolve_path(self, filename: str) -> str:
        """The Hub resolve path of a file of the demo model at main."""
        return f"/{REPO}/resolve/main/{filename}"


def environment(data_dir: Path, database_url: str | None) -> dict[str, str]:
    """The AIRLOCK_* variables a gunicorn process serving this data dir needs."""
    env = {"AIRLOCK_DATA_DIR": str(data_dir), "AIRLOCK_LOG_LEVEL": "WARNING"}
    if database_url:
        env["AIRLOCK_DATABASE_URL"] = database_url
    return env


def build_world(data_dir: Path, *, database_url: str | None, big_bytes: int) -> World:
    """Migrate, seed the demo, lift its daily limits and marking, and commit a large file."""
    env = environment(data_dir, database_url)
    settings = load_settings(env)
    upgrade(settings.database_url)
    airlock = build_airlock(settings)
    try:
        tokens = seed(airlock, data_dir)
        _apply_bench_policy(airlock, tokens["publisher"])
        big = _commit_big_file(airlock, tokens["publisher"], data_dir, big_bytes)
    finally:
        airlock.close()
    return World(env, settings, tokens["researcher"], big)


def _apply_bench_policy(airlock: Airlock, publisher_token: str) -> None:
    document = yaml.safe_load(demo_policy())
    tier = next(t for t in document["tiers"] if t["name"] == WEIGHTS_TIER)
    tier["limits"] = {**tier.get("limits", {}), **BENCH_LIMITS}
    # The demo marks this tier's weights per grant, which needs a worker to stage each copy
    # first; the benchmark compares serving one stored file with nginx serving the same file.
    tier["fingerprint"] = False
    with airlock.db.session() as session:
        publisher = airlock.identity.authenticate(session, publisher_token)
        airlock.policies.apply(
            session,
            principal=publisher,
            source=yaml.safe_dump(document, sort_keys=False),
            comment="bench: daily download limits lifted",
        )


def _commit_big_file(
    airlock: Airlock, publisher_token: str, data_dir: Path, size: int
) -> Path | None:
    """Add a `size`-byte safetensors file to the model's head; returns its stored path."""
    if size <= 0:
        return None
    source = data_dir / "seed" / BIG_FILE
    digest = write_safetensors(source, size)
    pub = airlock.publishing
    with airlock.db.session() as session:
        publisher = airlock.identity.authenticate(session, publisher_token)
        model = pub.get_model(session, REPO)
        head = model.head_revision
        assert head is not None
        with source.open("rb") as stream:
            pub.upload_blob(
                session,
                principal=publisher,
                model=model,
                sha256=digest,
                stream=stream,
                max_bytes=airlock.settings.max_upload_bytes,
            )
        source.unlink()  # the stored copy is the one both servers read
        manifest = [ManifestEntry(f.path, f.size, f.sha256) for f in head.files]
        manifest.append(ManifestEntry(BIG_FILE, size, digest))
        revision = pub.commit(
            session, principal=publisher, model=model, manifest=manifest, message="bench file"
        )
        stored = next(f for f in revision.files if f.path == BIG_FILE)
        return airlock.storage.local_path(stored.storage_key)


def write_safetensors(path: Path, size: int) -> str:
    """A valid safetensors file of exactly `size` bytes (one U8 tensor); returns its sha256."""
    header = b""
    while True:  # the header's length depends on the tensor's, which depends on it
        data = size - 8 - len(header)
        meta = {"bench": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}}
        encoded = json.dumps(meta, separators=(",", ":")).encode()
        encoded += b" " * (-(8 + len(encoded)) % 8)
        if encoded == header:
            break
        header = encoded
    chunk = os.urandom(1024 * 1024)  # incompressible, and a real (not sparse) file
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        prefix = len(header).to_bytes(8, "little") + header
        out.write(prefix)
        digest.update(prefix)
        while data > 0:
            piece = chunk[: min(len(chunk), data)]
            out.write(piece)
            digest.update(piece)
            data -= len(piece)
    return digest.hexdigest()
