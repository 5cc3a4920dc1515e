"""Settings: the one place that reads the environment (``AIRLOCK_*`` variables)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DATA_DIR = "./var/airlock"
LOG_FORMATS = ("json", "text")
# Inference upstreams' credentials: a model names one of these variables, never holds the value,
# and cannot name any other variable (such as AIRLOCK_SECRET_KEY).
UPSTREAM_KEY_PREFIX = "AIRLOCK_UPSTREAM_KEY_"
FINGERPRINT_SECRET = "AIRLOCK_FINGERPRINT_SECRET"  # noqa: S105 (a variable name)
URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:]*):[^/@\s]*@")
KYC_PROVIDERS = {  # name: (environment prefix, default API base URL)
    "persona": ("AIRLOCK_KYC_PERSONA_", "https://withpersona.com/api/v1"),
    "stripe_identity": ("AIRLOCK_KYC_STRIPE_", "https://api.stripe.com"),
    "onfido": ("AIRLOCK_KYC_ONFIDO_", "https://api.eu.onfido.com/v3.6"),
}


@dataclass(frozen=True)
class KycProviderSettings:
    """One KYC provider's API base URL, key, hosted-flow template and active webhook secrets."""

    name: str
    api_url: str
    api_key: str = field(default="", repr=False)
    flow_id: str = ""
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Settings:
    """Every configurable value of a gateway or worker process, resolved once."""

    data_dir: Path
    database_url: str
    storage_url: str
    secret_key: str = field(repr=False)
    public_url: str | None = None
    # Per-recipient fingerprint keys by version: `fingerprint_key_version` marks new copies,
    # older versions still trace copies marked before a rotation.
    fingerprint_secrets: Mapping[int, str] = field(default_factory=dict, repr=False)
    fingerprint_key_version: int = 1
    redis_url: str | None = None
    ratelimit_timeout: float = 0.1
    broker_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = "auto"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    upload_part_bytes: int = 64 * 1024**2
    upload_url_ttl_seconds: int = 3600
    upload_expiry_hours: int = 72
    trusted_proxies: tuple[str, ...] = ()
    geo_header: str | None = None
    geoip_db: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_upload_bytes: int = 64 * 1024**3
    blob_url_ttl_seconds: int = 600
    token_ttl_days: int = 90
    web_idle_minutes: int = 60
    web_max_hours: int = 12
    login_link_minutes: int = 15
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = field(default=None, repr=False)
    oidc_scopes: str = "openid email profile"
    oidc_allow_signup: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_dir: Path | None = None
    metrics_token: str | None = field(default=None, repr=False)
    worker_metrics_port: int | None = None
    readyz_timeout: float = 1.0
    kyc_providers: tuple[KycProviderSettings, ...] = ()
    kyc_http_timeout: float = 10.0
    kyc_validity_days: int = 365
    upstream_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    upstream_timeout: float = 60.0
    inference_max_tokens: int = 1024
    inference_lease_seconds: int = 900
    audit_signing_key: str | None = field(default=None, repr=False)
    audit_retired_keys: tuple[str, ...] = ()
    audit_origin: str | None = None
    audit_checkpoint_seconds: int = 300
    audit_checkpoint_events: int = 10_000
    audit_forward: str | None = None  # stdout | file:/path | syslog+udp://h:p | syslog+tcp://h:p
    audit_retention_years: int = 10

    @property
    def checkpoint_origin(self) -> str:
        """The origin line of audit checkpoints: set, else `<public URL host>/audit`."""
        if self.audit_origin:
            return self.audit_origin
        host = urlsplit(self.public_url).hostname if self.public_url else None
        return f"{host or 'localhost'}/audit"

    def __repr__(self) -> str:
        """The dataclass repr, with the password of any URL (database, Redis, broker) masked."""
        shown = (f"{f.name}={_masked(getattr(self, f.name))!r}" for f in fields(self) if f.repr)
        return f"Settings({', '.join(shown)})"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (for tests and the demo)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def load_settings(
    environ: Mapping[str, str] | None = None, *, data_dir: str | Path | None = None
) -> Settings:
    """Read ``AIRLOCK_*`` variables into a Settings, generating local secrets on first run."""
    env = os.environ if environ is None else environ
    root = Path(data_dir or env.get("AIRLOCK_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
    return Settings(
        data_dir=root,
        database_url=env.get("AIRLOCK_DATABASE_URL") or f"sqlite:///{root / 'airlock.db'}",
        storage_url=env.get("AIRLOCK_STORAGE_URL") or f"file://{root / 'blobs'}",
        secret_key=env.get("AIRLOCK_SECRET_KEY") or _local_secret(root, "secret_key"),
        public_url=env.get("AIRLOCK_PUBLIC_URL") or None,
        redis_url=env.get("AIRLOCK_REDIS_URL") or None,
        fingerprint_secrets=_fingerprint_secrets(env, root),
        fingerprint_key_version=_fingerprint_version(env),
        ratelimit_timeout=int(env.get("AIRLOCK_RATELIMIT_TIMEOUT_MS", 100)) / 1000,
        broker_url=env.get("AIRLOCK_BROKER_URL") or None,
        s3_endpoint_url=env.get("AIRLOCK_S3_ENDPOINT_URL") or None,
        s3_region=env.get("AIRLOCK_S3_REGION") or None,
        s3_addressing_style=env.get("AIRLOCK_S3_ADDRESSING_STYLE") or "auto",
        s3_access_key_id=env.get("AIRLOCK_S3_ACCESS_KEY_ID") or None,
        s3_secret_access_key=env.get("AIRLOCK_S3_SECRET_ACCESS_KEY") or None,
        upload_part_bytes=int(env.get("AIRLOCK_UPLOAD_PART_BYTES", 64 * 1024**2)),
        upload_url_ttl_seconds=int(env.get("AIRLOCK_UPLOAD_URL_TTL", 3600)),
        upload_expiry_hours=int(env.get("AIRLOCK_UPLOAD_EXPIRY_HOURS", 72)),
        trusted_proxies=_csv(env.get("AIRLOCK_TRUSTED_PROXIES")),
        geo_header=env.get("AIRLOCK_GEO_HEADER") or None,
        geoip_db=env.get("AIRLOCK_GEOIP_DB") or None,
        max_body_bytes=int(env.get("AIRLOCK_MAX_BODY_BYTES", 1024 * 1024)),
        blob_url_ttl_seconds=int(env.get("AIRLOCK_BLOB_URL_TTL", 600)),
        web_idle_minutes=int(env.get("AIRLOCK_WEB_IDLE_MINUTES", 60)),
        web_max_hours=int(env.get("AIRLOCK_WEB_MAX_HOURS", 12)),
        login_link_minutes=int(env.get("AIRLOCK_LOGIN_LINK_MINUTES", 15)),
        oidc_issuer=env.get("AIRLOCK_OIDC_ISSUER") or None,
        oidc_client_id=env.get("AIRLOCK_OIDC_CLIENT_ID") or None,
        oidc_client_secret=_value_or_file(env, "AIRLOCK_OIDC_CLIENT_SECRET") or None,
        oidc_scopes=env.get("AIRLOCK_OIDC_SCOPES") or "openid email profile",
        oidc_allow_signup=env.get("AIRLOCK_OIDC_ALLOW_SIGNUP", "").lower() in ("1", "true", "yes"),
        log_level=env.get("AIRLOCK_LOG_LEVEL", "INFO"),
        log_format=_one_of(
            env.get("AIRLOCK_LOG_FORMAT") or "text", "AIRLOCK_LOG_FORMAT", LOG_FORMATS
        ),
        # prometheus_client reads this variable itself, when it loads: it is the one name both
        # must agree on, so Airlock reads it too rather than inventing its own.
        metrics_dir=Path(d) if (d := env.get("PROMETHEUS_MULTIPROC_DIR")) else None,
        metrics_token=env.get("AIRLOCK_METRICS_TOKEN") or None,
        worker_metrics_port=int(p) if (p := env.get("AIRLOCK_WORKER_METRICS_PORT")) else None,
        readyz_timeout=int(env.get("AIRLOCK_READYZ_TIMEOUT_MS", 1000)) / 1000,
        kyc_providers=_kyc_providers(env),
        kyc_http_timeout=int(env.get("AIRLOCK_KYC_HTTP_TIMEOUT_MS", 10000)) / 1000,
        kyc_validity_days=int(env.get("AIRLOCK_KYC_VALIDITY_DAYS", 365)),
        upstream_keys={k: v for k, v in env.items() if k.startswith(UPSTREAM_KEY_PREFIX) and v},
        upstream_timeout=int(env.get("AIRLOCK_UPSTREAM_TIMEOUT_MS", 60000)) / 1000,
        inference_max_tokens=int(env.get("AIRLOCK_INFERENCE_MAX_TOKENS", 1024)),
        inference_lease_seconds=int(env.get("AIRLOCK_INFERENCE_LEASE_SECONDS", 900)),
        audit_signing_key=_value_or_file(env, "AIRLOCK_AUDIT_SIGNING_KEY") or None,
        audit_retired_keys=_lines(_value_or_file(env, "AIRLOCK_AUDIT_RETIRED_KEYS")),
        audit_origin=env.get("AIRLOCK_AUDIT_ORIGIN") or None,
        audit_checkpoint_seconds=int(env.get("AIRLOCK_AUDIT_CHECKPOINT_SECONDS", 300)),
        audit_checkpoint_events=int(env.get("AIRLOCK_AUDIT_CHECKPOINT_EVENTS", 10_000)),
        audit_forward=env.get("AIRLOCK_AUDIT_FORWARD") or None,
        audit_retention_years=_retention_years(env.get("AIRLOCK_AUDIT_RETENTION_YEARS")),
    )


def _kyc_providers(env: Mapping[str, str]) -> tuple[KycProviderSettings, ...]:
    """The providers with an API key or webhook secrets set; the others stay disabled."""
    found = []
    for name, (prefix, default_url) in KYC_PROVIDERS.items():
        key = env.get(prefix + "API_KEY") or ""
        secrets_ = _csv(env.get(prefix + "WEBHOOK_SECRETS"))
        if key or secrets_:
            found.append(
                KycProviderSettings(
                    name=name,
                    api_url=env.get(prefix + "API_URL") or default_url,
                    api_key=key,
                    flow_id=env.get(prefix + "FLOW_ID") or "",
                    webhook_secrets=secrets_,
                )
            )
    return tuple(found)


def _one_of(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _value_or_file(env: Mapping[str, str], name: str) -> str:
    """`name`'s value, else the text of the file `<name>_FILE` names (a missing file raises)."""
    if value := env.get(name, "").strip():
        return value
    path = env.get(f"{name}_FILE")
    return Path(path).read_text().strip() if path else ""


def _lines(value: str) -> tuple[str, ...]:
    """Items separated by commas or newlines (verifier keys contain neither)."""
    return tuple(p.strip() for p in re.split(r"[,\n]", value) if p.strip())


def _masked(value: object) -> object:
    """A URL with its password replaced by ``***``; any other value as it is."""
    return URL_PASSWORD.sub(r"\1:***@", value) if isinstance(value, str) else value


def _local_secret(root: Path, name: str) -> str:
    """Return a secret kept in the data dir, creating it (mode 0600) on first use."""
    path = root / name
    if path.exists():
        return path.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def _retention_years(value: str | None) -> int:
    years = int(value or 10)
    if years < 1:
        raise ValueError(f"AIRLOCK_AUDIT_RETENTION_YEARS must be at least 1, not {years}")
    return years


def _fingerprint_version(env: Mapping[str, str]) -> int:
    return int(env.get("AIRLOCK_FINGERPRINT_KEY_VERSION") or 1)


def _fingerprint_secrets(env: Mapping[str, str], root: Path) -> dict[int, str]:
    """`AIRLOCK_FINGERPRINT_SECRET` (else one generated into the data dir) under the current
    version, and retired keys as `AIRLOCK_FINGERPRINT_SECRET_V<n>`."""
    found = {
        int(name.removeprefix(FINGERPRINT_SECRET + "_V")): value
        for name, value in env.items()
        if name.startswith(FINGERPRINT_SECRET + "_V")
        and name[len(FINGERPRINT_SECRET) + 2 :].isdigit()
    }
    current = env.get(FINGERPRINT_SECRET) or _local_secret(root, "fingerprint_secret")
    return {**found, _fingerprint_version(env): current}
