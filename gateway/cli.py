"""The `airlock` command: demo, server, database, publisher, reviewer and audit tools."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click

from gateway.client import (
    ApiClient,
    ApiError,
    LocalFile,
    StorageError,
    client_from_env,
    repo_path,
    send_file,
)
from gateway.errors import AirlockError
from gateway.settings import Settings, load_settings

endpoint_option = click.option("--endpoint", envvar="AIRLOCK_ENDPOINT", help="Airlock base URL.")
token_option = click.option("--token", envvar="AIRLOCK_TOKEN", help="API token (alk_...).")


@click.group()
def main() -> None:
    """Airlock: staged access to frontier model weights and inference."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", default="./var/demo", show_default=True, type=click.Path())
def demo(host: str, port: int, data_dir: str) -> None:
    """Seed (first run) or reuse a demo deployment, write demo.json, and serve it."""
    from gateway.app import create_app
    from gateway.db.migrate import upgrade
    from gateway.demo import how_to, login_links, seed, wire_upstream, write_demo_json
    from gateway.devtools.upstream import ReferenceUpstream
    from gateway.services.container import build_airlock

    root = Path(data_dir).resolve()
    endpoint = f"http://{host}:{port}"
    settings = load_settings(data_dir=root).with_overrides(public_url=endpoint)
    upgrade(settings.database_url)
    airlock = build_airlock(settings)
    tokens = seed(airlock, root)
    upstream = ReferenceUpstream().start()  # the demo's model server: a development tool
    wire_upstream(airlock, upstream.base_url)
    links = login_links(airlock, endpoint)
    document = write_demo_json(root / "demo.json", endpoint, tokens, links)
    click.echo(how_to(document))
    _serve(create_app(airlock=airlock), host, port)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Serve the gateway with the development server (use gunicorn in production)."""
    from gateway.app import create_app

    _serve(create_app(), host, port)


@main.command("dev-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8100, show_default=True, type=int)
@click.option("--api-key", help="Answer 401 unless requests send 'Authorization: Bearer <key>'.")
def dev_upstream(host: str, port: int, api_key: str | None) -> None:
    """Serve the reference OpenAI-compatible upstream (a development tool, not a model)."""
    from gateway.devtools.upstream import ReferenceUpstream

    upstream = ReferenceUpstream(host, port, api_key=api_key)
    click.echo(f"reference upstream at {upstream.base_url}")
    upstream.server.serve_forever()


def _serve(app: Any, host: str, port: int) -> None:
    from werkzeug.serving import run_simple

    run_simple(host, port, app, threaded=True, use_reloader=False)


@main.command()
@click.option(
    "--queues",
    default="vetting,provisioning,kyc,audit,default",
    show_default=True,
    help="Comma-separated queues to consume.",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 256), help="Worker processes (default: CPUs)."
)
def worker(queues: str, concurrency: int | None) -> None:
    """Run a Celery worker with the AIRLOCK_* settings (needs AIRLOCK_BROKER_URL)."""
    from gateway.tasks.catalog import QUEUES
    from workers.celery_app import run_worker

    settings = _broker_settings()
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if not wanted or unknown:
        raise click.BadParameter(f"queues are {', '.join(QUEUES)}", param_hint="--queues")
    run_worker(settings, queues=wanted, concurrency=concurrency)


@main.command()
def beat() -> None:
    """Run Celery beat, which sends the periodic sweep (run one per deployment)."""
    from workers.celery_app import run_beat

    run_beat(_broker_settings())


@main.command()
def sweep() -> None:
    """Run the grant sweep once, in this process (cron, for deployments without a broker)."""
    from gateway.services.container import build_airlock
    from gateway.tasks.jobs import sweep_grants

    airlock = build_airlock(load_settings())
    try:
        sweep_grants(airlock)
    finally:
        airlock.close()
    click.echo("sweep done")


@main.command()
@click.argument(
    "suspects",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--model", "repo_id", help="The model it leaked from (default: every marked model).")
@click.option("--revision", help="Only copies of this revision (a commit id or 'main').")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option(
    "--remote", is_flag=True, help="Ask a gateway's trace API (--endpoint, --token; one file each)."
)
@endpoint_option
@token_option
def trace(
    suspects: tuple[Path, ...],
    repo_id: str | None,
    revision: str | None,
    as_json: bool,
    remote: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Attribute leaked SUSPECTS (safetensors shards) to the grants they were delivered to.

    Runs on the deployment (its database, storage and fingerprint keys): an exact digest match
    against every delivered copy, then each grant's mark tested as a z-score. With --remote, a
    publisher or compliance member sends each file to the gateway's trace API instead.
    """
    if remote:
        if not repo_id:
            raise click.UsageError("--remote needs --model")
        client = client_from_env(endpoint, token)
        reports = [_trace_remote(client, repo_id, path, revision) for path in suspects]
    else:
        reports = _trace_here(suspects, repo_id, revision)
    if as_json:
        _print(reports)
        return
    for report in reports:
        _echo_trace(report)
    if not reports:
        click.echo("no model has marked copies: nothing to trace against")


def _trace_here(
    suspects: tuple[Path, ...], repo_id: str | None, revision: str | None
) -> list[dict[str, Any]]:
    from gateway.services.container import build_airlock

    airlock = build_airlock(load_settings())
    try:
        with airlock.db.session() as session:
            repos = [repo_id] if repo_id else airlock.tracing.marked_models(session)
            return [
                airlock.tracing.trace(
                    session, principal=None, repo_id=r, suspects=suspects, revision=revision
                ).to_dict()
                for r in repos
            ]
    except AirlockError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        airlock.close()


def _trace_remote(client: ApiClient, repo_id: str, path: Path, revision: str | None) -> Any:
    query = f"?{urlencode({'revision': revision})}" if revision else ""
    with path.open("rb") as data:
        return _call(
            lambda: client.request(
                "POST",
                f"{repo_path(repo_id)}/trace{query}",
                data=data,
                length=path.stat().st_size,
                content_type="application/octet-stream",
            )
        )


def _echo_trace(report: dict[str, Any]) -> None:
    named = ", ".join(f"grant {g}" for g in report["attributed"])
    click.echo(f"{report['model']}: {report['verdict']}" + (f" to {named}" if named else ""))
    for match in report["exact"]:
        click.echo(
            f"  exact copy of {match['path']} delivered to grant {match['grant_id']}"
            f" ({match['username']}, tier {match['tier']})"
        )
    click.echo(f"  {'grant':>7}  {'user':<16} {'tier':<20} {'z':>8}  compared")
    for f in report["ranked"][:10]:
        click.echo(
            f"  {f['grant_id']:>7}  {f['username']:<16} {f['tier']:<20} {f['z']:>8.2f}"
            f"  {f['compared']}"
        )
    ranked = len(report["ranked"])
    click.echo(f"  threshold: z >= {report['threshold']} ({ranked} grants tested)")


def _broker_settings() -> Settings:
    settings = load_settings()
    if not settings.broker_url:
        raise click.ClickException(
            "AIRLOCK_BROKER_URL is not set: without a broker, tasks run inside the gateway"
        )
    return settings


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to the configured database."""
    from gateway.db.migrate import upgrade

    upgrade(load_settings().database_url)
    click.echo("database is at the newest schema")


@db.command("check")
def db_check() -> None:
    """Fail if the models and the migrated database disagree."""
    from gateway.db.engine import Database
    from gateway.db.migrate import schema_drift

    database = Database(load_settings().database_url)
    try:
        drift = schema_drift(database.engine)
    finally:
        database.dispose()
    if drift:
        click.echo(f"models and migrations disagree: {drift}", err=True)
        sys.exit(1)
    click.echo("models and migrations agree")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option("--message", "-m", default="", help="Commit message.")
@click.option("--create/--no-create", default=True, help="Create the model if it is missing.")
@endpoint_option
@token_option
def push(
    directory: Path,
    repo_id: str,
    message: str,
    create: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Upload DIRECTORY as a new revision of REPO_ID (org/name)."""
    client = client_from_env(endpoint, token)
    files = _scan(directory)
    if create:
        _ensure_model(client, repo_id)
    total = sum(f.size for f in files)
    with click.progressbar(
        length=total, label=f"uploading {len(files)} files", file=sys.stderr
    ) as bar:
        for file in files:
            sent = _call(lambda f=file: _send(client, repo_id, f, bar.update))
            if sent.parts_skipped:
                click.echo(
                    f"\nresumed {file.path}: {sent.parts_skipped} parts were already uploaded, "
                    f"sent {sent.parts_sent}",
                    err=True,
                )
    manifest = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]
    revision = _call(
        lambda: client.request(
            "POST", f"{repo_path(repo_id)}/commits", {"files": manifest, "message": message}
        )
    )
    click.echo(
        f"{repo_id}@{revision['commit']} ({len(files)} files, {total} bytes); "
        f"vetting: {revision['vetting_status']}"
    )


def _send(client: ApiClient, repo_id: str, file: LocalFile, report: Any) -> Any:
    try:
        return send_file(client, repo_id, file, report)
    except StorageError as exc:
        raise click.ClickException(f"{file.path}: {exc}; run push again to resume") from None


def _scan(directory: Path) -> list[LocalFile]:
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel.split("/")[0] in (".git", ".cache"):
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        files.append(LocalFile(rel, path, path.stat().st_size, digest.hexdigest()))
    if not files:
        raise click.ClickException(f"{directory} holds no files")
    return files


def _ensure_model(client: ApiClient, repo_id: str) -> None:
    try:
        client.request("POST", "/api/v1/models", {"repo_id": repo_id})
    except ApiError as exc:
        if exc.status != 409:
            _fail(exc)


@main.group()
def policy() -> None:
    """Release policies."""


@policy.command("apply")
@click.argument("file", type=click.File("r"))
@click.option("--comment", default="")
@endpoint_option
@token_option
def policy_apply(file: Any, comment: str, endpoint: str | None, token: str | None) -> None:
    """Validate FILE and apply it as the next version of its model's policy."""
    result = _api(
        endpoint, token, "POST", "/api/v1/policies", {"source": file.read(), "comment": comment}
    )
    state = "applied" if result["created"] else "unchanged"
    click.echo(
        f"{result['repo_id']}: policy version {result['version']} {state} "
        f"(sha256 {result['sha256'][:12]})"
    )


@policy.command("validate")
@click.argument("file", type=click.File("r"))
def policy_validate(file: Any) -> None:
    """Validate FILE locally (no server needed); print every problem with its line."""
    from policies import PolicyError, load_packs, parse_policy

    try:
        parsed = parse_policy(file.read(), packs=load_packs())
    except PolicyError as exc:
        for issue in exc.issues:
            click.echo(f"{file.name}:{issue.line or '?'}: {issue.path}: {issue.message}", err=True)
        sys.exit(1)
    click.echo(f"{parsed.model}: valid ({len(parsed.tiers)} tiers, stage {parsed.stage})")


@policy.command("rescreen")
@click.option("--pack", "pack_id", help="Only models whose policy references this pack.")
def policy_rescreen(pack_id: str | None) -> None:
    """Re-judge every live grant once, in this process (the daily beat job; cron without a
    broker, or `--pack ID` after deploying a changed jurisdiction pack)."""
    from gateway.services.container import build_airlock
    from gateway.tasks.jobs import rescreen_grants

    airlock = build_airlock(load_settings())
    try:
        if pack_id is not None and airlock.packs.get(pack_id) is None:
            known = ", ".join(sorted(p.id for p in airlock.packs))
            raise click.BadParameter(f"no pack '{pack_id}'; known: {known}", param_hint="--pack")
        rescreen_grants(airlock, pack_id=pack_id)
    finally:
        airlock.close()
    click.echo("rescreen done")


@policy.command("check")
@click.argument("file", type=click.File("r"))
@click.option(
    "--model", "repo_id", help="Check against this model's grants (default: the policy's)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@endpoint_option
@token_option
def policy_check(
    file: Any, repo_id: str | None, as_json: bool, endpoint: str | None, token: str | None
) -> None:
    """Dry-run FILE: list the live grants it would keep, suspend, revoke or reinstate."""
    body: dict[str, Any] = {"source": file.read()}
    if repo_id:
        body["repo_id"] = repo_id
    report = _api(endpoint, token, "POST", "/api/v1/policies/check", body)
    if as_json:
        _print(report)
        return
    version = report["current_version"]
    against = f"policy version {version}" if version is not None else "no policy yet"
    click.echo(f"{report['repo_id']}: this policy against the grants under {against}")
    for kind in ("grants", "requests"):
        for item in report[kind]:
            ident = item.get("grant_id") or item.get("request_id")
            why = (
                " ".join(r["message"] for r in item["reasons"]) if item["action"] != "keep" else ""
            )
            line = f"  {item['action']:<9} {kind[:-1]} {ident} {item['user']} ({item['tier']})"
            click.echo(f"{line}: {why}" if why else line)
    counts = ", ".join(f"{n} {action}" for action, n in report["summary"].items() if n)
    click.echo(f"grants: {counts or 'none live'}")


@policy.command("explain")
@click.argument("file", type=click.File("r"))
@click.option("--tier", required=True, help="The tier to decide.")
@click.option(
    "--subject",
    "subject_file",
    required=True,
    type=click.File("r"),
    help="JSON facts about the requester (kyc_level, nationality, residence_country, ...).",
)
@click.option("--at", "at", help="Decide as of this UTC time (ISO 8601); default: now.")
def policy_explain(file: Any, tier: str, subject_file: Any, at: str | None) -> None:
    """Decide one tier of FILE for a subject locally and print the decision as JSON."""
    from policies import PolicyError, evaluate, load_packs, parse_policy, parse_subject

    packs = load_packs()
    try:
        parsed = parse_policy(file.read(), packs=packs)
        subject = parse_subject(_json_document(subject_file))
    except PolicyError as exc:
        for issue in exc.issues:
            click.echo(f"{issue.path or '<root>'}: {issue.message}", err=True)
        sys.exit(1)
    decision = evaluate(parsed, tier, subject, now=_instant(at), packs=packs)
    _print({"model": parsed.model, **decision.to_dict()})


def _json_document(file: Any) -> Any:
    try:
        return json.load(file)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{file.name} is not JSON: {exc}") from None


def _instant(at: str | None) -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC) if at is None else _when(at, hint="--at")


@main.command("request")
@click.argument("repo_id")
@click.option("--tier", required=True)
@click.option("--agreement", help="Accept an agreement, e.g. acme-research-aup@2.")
@click.option("--field", "fields", multiple=True, metavar="NAME=VALUE", help="A form field.")
@endpoint_option
@token_option
def request_access(
    repo_id: str,
    tier: str,
    agreement: str | None,
    fields: tuple[str, ...],
    endpoint: str | None,
    token: str | None,
) -> None:
    """Request a tier of REPO_ID and print the decision with every reason."""
    form = dict(f.split("=", 1) for f in fields if "=" in f)
    body = {"tier": tier, "form": form, "agreement": agreement}
    _print(_api(endpoint, token, "POST", f"{repo_path(repo_id)}/access", body))


@main.group()
def requests() -> None:
    """Access requests (reviewers)."""


@requests.command("list")
@click.option("--status", default="pending", show_default=True)
@endpoint_option
@token_option
def requests_list(status: str, endpoint: str | None, token: str | None) -> None:
    """List requests for your organizations' models."""
    _print(_api(endpoint, token, "GET", f"/api/v1/requests?status={status}"))


@requests.command("decide")
@click.argument("request_id", type=int)
@click.argument("verdict", type=click.Choice(["approve", "reject"]))
@click.option("--note", default="")
@endpoint_option
@token_option
def requests_decide(
    request_id: int, verdict: str, note: str, endpoint: str | None, token: str | None
) -> None:
    """Approve or reject a request (rejections need --note)."""
    body = {"verdict": verdict, "note": note}
    _print(_api(endpoint, token, "POST", f"/api/v1/requests/{request_id}/review", body))


@requests.command("reset")
@click.argument("request_id", type=int)
@click.option("--reason", required=True)
@endpoint_option
@token_option
def requests_reset(request_id: int, reason: str, endpoint: str | None, token: str | None) -> None:
    """Send a decided request back to pending (verdicts cleared, its grant revoked)."""
    path = f"/api/v1/requests/{request_id}/reset"
    _print(_api(endpoint, token, "POST", path, {"reason": reason}))


@main.group()
def grants() -> None:
    """Grants."""


@grants.command("revoke")
@click.argument("grant_id", type=int)
@click.option("--reason", required=True)
@endpoint_option
@token_option
def grants_revoke(grant_id: int, reason: str, endpoint: str | None, token: str | None) -> None:
    """Revoke a grant; the next request under it is refused."""
    path = f"/api/v1/grants/{grant_id}/revoke"
    _print(_api(endpoint, token, "POST", path, {"reason": reason}))


@grants.command("renew")
@click.argument("grant_id", type=int)
@click.option("--agreement", help="Accept the tier's agreement again, e.g. acme-aup@2.")
@click.option("--field", "fields", multiple=True, metavar="NAME=VALUE", help="A form field.")
@endpoint_option
@token_option
def grants_renew(
    grant_id: int,
    agreement: str | None,
    fields: tuple[str, ...],
    endpoint: str | None,
    token: str | None,
) -> None:
    """Renew your grant in its renewal window; without --field, the previous answers are sent
    again (and the previous agreement, if the tier still requires that version)."""
    form = dict(f.split("=", 1) for f in fields if "=" in f) if fields else None
    body = {"form": form, "agreement": agreement}
    _print(_api(endpoint, token, "POST", f"/api/v1/grants/{grant_id}/renew", body))


@main.command()
@click.argument("repo_id")
@click.option("--reason", required=True)
@click.option("--undo", is_flag=True, help="Unfreeze instead.")
@endpoint_option
@token_option
def freeze(repo_id: str, reason: str, undo: bool, endpoint: str | None, token: str | None) -> None:
    """Emergency freeze of REPO_ID: weights and inference refused at once."""
    body = {"frozen": not undo, "reason": reason}
    _print(_api(endpoint, token, "POST", f"{repo_path(repo_id)}/freeze", body))


@main.command("upstream")
@click.argument("repo_id")
@click.option(
    "--url", required=True, help="The OpenAI-compatible base URL, e.g. http://vllm:8000/v1."
)
@click.option("--key-ref", help="The AIRLOCK_UPSTREAM_KEY_* variable holding its credential.")
@click.option("--model", "served_as", help="The name the upstream serves the model under.")
@click.option(
    "--prompt-digests/--no-prompt-digests",
    default=False,
    show_default=True,
    help="Audit SHA-256 digests of each prompt and completion (never their text).",
)
@endpoint_option
@token_option
def upstream(
    repo_id: str,
    url: str,
    key_ref: str | None,
    served_as: str | None,
    prompt_digests: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Set REPO_ID's inference upstream (replacing its whole upstream configuration)."""
    body = {"url": url, "key_ref": key_ref, "model": served_as, "prompt_digests": prompt_digests}
    _print(_api(endpoint, token, "PUT", f"{repo_path(repo_id)}/upstream", body))


@main.group()
def admin() -> None:
    """Operator commands on the configured database (organizations, users, roles, tokens)."""


def _services() -> Any:
    from gateway.services.container import build_airlock

    return build_airlock(load_settings())


@admin.command("create-org")
@click.argument("slug")
@click.option("--name", required=True)
@click.option("--hq-country", help="ISO 3166-1 alpha-2 code of the headquarters.")
def admin_create_org(slug: str, name: str, hq_country: str | None) -> None:
    """Create an organization."""
    airlock = _services()
    with airlock.db.session() as session:
        org = _domain(
            lambda: airlock.identity.create_org(
                session, slug=slug, name=name, hq_country=hq_country, actor_id=None
            )
        )
        click.echo(f"organization {org.slug} created")


@admin.command("create-user")
@click.argument("username")
@click.option("--email", required=True)
@click.option("--org", "org_slug", help="Give the user a role in this organization.")
@click.option("--role", type=click.Choice(["owner", "publisher", "reviewer", "compliance"]))
def admin_create_user(username: str, email: str, org_slug: str | None, role: str | None) -> None:
    """Create a user, optionally with a role in an organization."""
    from sqlalchemy import select

    from gateway.db.models import Organization, Role

    if bool(org_slug) != bool(role):
        raise click.UsageError("--org and --role go together")
    airlock = _services()
    with airlock.db.session() as session:
        org = None
        if org_slug:
            org = session.scalar(select(Organization).where(Organization.slug == org_slug))
            if org is None:
                raise click.ClickException(f"no organization {org_slug!r}")
        user = _domain(
            lambda: airlock.identity.create_user(
                session, username=username, email=email, actor_id=None
            )
        )
        if org is not None and role:
            airlock.identity.add_member(session, org=org, user=user, role=Role(role), actor_id=None)
        click.echo(f"user {user.username} created" + (f" as {role} of {org_slug}" if role else ""))


@admin.command("login-link")
@click.argument("username")
@click.option("--minutes", type=click.IntRange(1, 24 * 60), help="Lifetime (default: settings).")
def admin_login_link(username: str, minutes: int | None) -> None:
    """Print a one-time browser sign-in link for USERNAME (stored only as a hash)."""
    from datetime import timedelta

    from sqlalchemy import select

    from gateway.db.models import User
    from gateway.services.web_auth import WebAuthService

    airlock = _services()
    service = WebAuthService.from_settings(airlock.settings, identity=airlock.identity)
    ttl = timedelta(minutes=minutes) if minutes else service.link_ttl
    with airlock.db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise click.ClickException(f"no user {username!r}")
        token = service.issue_link(session, user=user, ttl=ttl)
    base = (airlock.settings.public_url or "").rstrip("/")
    if not base:
        click.echo("AIRLOCK_PUBLIC_URL is unset: prefix the path with this gateway's URL", err=True)
    minutes_left = int(ttl.total_seconds() // 60)
    click.echo(f"{base}/ui/login/link?token={token}")
    click.echo(f"(one use, expires in {minutes_left} minutes)", err=True)


@admin.command("issue-token")
@click.argument("username")
@click.option("--scope", "scopes", multiple=True, required=True, help="Repeat for each scope.")
@click.option("--days", default=90, show_default=True, type=click.IntRange(1, 366))
@click.option("--name", default="issued by an operator", show_default=True)
def admin_issue_token(username: str, scopes: tuple[str, ...], days: int, name: str) -> None:
    """Issue a token for USERNAME and print it once (it is stored only as a hash)."""
    from datetime import timedelta

    from sqlalchemy import select

    from gateway.auth.tokens import Scope
    from gateway.db.models import User

    try:
        wanted = [Scope(s) for s in scopes]
    except ValueError:
        raise click.BadParameter(f"scopes are {', '.join(sorted(Scope))}") from None
    airlock = _services()
    with airlock.db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise click.ClickException(f"no user {username!r}")
        issued = _domain(
            lambda: airlock.identity.issue_token(
                session,
                user=user,
                name=name,
                scopes=wanted,
                ttl=timedelta(days=days),
                actor_id=None,
            )
        )
        click.echo(issued.plaintext)


def _domain(action: Any) -> Any:
    from gateway.errors import AirlockError

    try:
        return action()
    except AirlockError as exc:
        raise click.ClickException(exc.detail) from None


@main.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
@click.option("--events", type=click.Path(dir_okay=False), help="Exported events (offline).")
@click.option(
    "--checkpoints",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint notes; repeat to compare the export with the object-storage copy.",
)
@click.option(
    "--pubkey", "pubkeys", multiple=True, type=click.Path(dir_okay=False), help="Verifier keys."
)
@click.option("--manifest", type=click.Path(dir_okay=False), help="The export's manifest.json.")
@click.option("--proof", type=click.Path(dir_okay=False), help="An `audit prove` file to check.")
def audit_verify(
    events: str | None,
    checkpoints: tuple[str, ...],
    pubkeys: tuple[str, ...],
    manifest: str | None,
    proof: str | None,
) -> None:
    """Verify the chain and its signed checkpoints (database and storage); exit 1 on a fault."""
    if events or proof:  # offline: exported files only, the database is never opened
        _verify_offline(events, checkpoints, pubkeys, manifest, proof)
        return
    from gateway.db.engine import Database
    from gateway.services.audit_log import AuditLogService

    settings = load_settings()
    database = Database(settings.database_url)
    with database.session() as session:
        report = AuditLogService().verify(session)
    if not report.ok:
        click.echo(
            f"audit chain BROKEN at seq {report.first_bad_seq}: {report.problem} "
            f"({report.checked} events verified before it)",
            err=True,
        )
    else:
        click.echo(f"audit chain OK: {report.checked} events, head at seq {report.head_seq}")
    anchored = _verify_checkpoints(settings, database, report.head_seq)
    database.dispose()
    if not (report.ok and anchored):
        sys.exit(1)


def _verify_checkpoints(settings: Settings, database: Any, head_seq: int) -> bool:
    """Check the stored checkpoints and print their state; whether they all hold."""
    from gateway.services.checkpoints import CheckpointService, verifier_keys
    from gateway.storage import storage_from_settings

    with database.session() as session:
        found = CheckpointService().verify(
            session, verifiers=verifier_keys(settings), storage=storage_from_settings(settings)
        )
    for problem in found.problems:
        click.echo(f"checkpoints BROKEN: {problem}", err=True)
    for warning in found.warnings:
        click.echo(f"checkpoints warning: {warning}", err=True)
    latest = found.latest
    if latest is None:
        click.echo("checkpoints: none yet, the chain is not anchored (airlock audit checkpoint)")
    elif found.ok:
        click.echo(
            f"checkpoints OK: {found.checked} signed, {found.stored} in object storage; the "
            f"latest covers {latest.tree_size} events ({head_seq - latest.tree_size} after it), "
            f"signed by {latest.key_name} {latest.key_id} at {latest.created_at:%Y-%m-%dT%H:%M:%SZ}"
        )
    return found.ok


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of the audit chain now (the beat task does it on a schedule)."""
    from gateway.services.checkpoints import ChainBroken, SigningKeyMissing, load_keys

    airlock = _services()
    try:
        keys = load_keys(airlock.settings)
        with airlock.db.session() as session:
            row = airlock.checkpoints.create(
                session,
                signer=keys.signer,
                storage=airlock.storage,
                origin=airlock.settings.checkpoint_origin,
            )
            latest = airlock.checkpoints.latest(session)
    except (SigningKeyMissing, ChainBroken) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        airlock.close()
    if row is not None:
        click.echo(
            f"checkpoint at size {row.tree_size} signed by {row.key_name} {row.key_id}, "
            f"stored as {row.storage_key}"
        )
    elif latest is not None:
        click.echo(f"no new events since the checkpoint at size {latest.tree_size}")
    else:
        click.echo("the audit log is empty: nothing to sign")


@audit.command("outbox")
@click.option("--drain", is_flag=True, help="Write the waiting events to the audit log now.")
def audit_outbox(drain: bool) -> None:
    """Audit events this host spooled because the database refused them (a stream's
    inference:serve event), waiting in <data dir>/audit-outbox: how many, how old; with
    --drain, write them now (a gateway does it on its own while it runs). Exit 1 when events
    are still waiting afterwards."""
    airlock = _services()
    try:
        outbox = airlock.audit_outbox
        if drain:
            written = outbox.drain()
            click.echo(f"wrote {written} spooled event(s) to the audit log")
        waiting, age = outbox.backlog()
    finally:
        airlock.close()
    if not waiting:
        click.echo(f"audit outbox {outbox.directory}: empty")
        return
    click.echo(
        f"audit outbox {outbox.directory}: {waiting} event(s) waiting, the oldest spooled "
        f"{age:.0f} s ago" + ("" if drain else "; `airlock audit outbox --drain` writes them")
    )
    sys.exit(1)


@audit.command("keys")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write them to this file.")
def audit_keys(out: str | None) -> None:
    """Print the checkpoint verifier keys, current first, then retired (for --pubkey)."""
    from gateway.services.checkpoints import SigningKeyMissing, load_keys

    try:
        keys = load_keys(load_settings())
    except SigningKeyMissing as exc:
        raise click.ClickException(str(exc)) from None
    text = "".join(key.to_text() + "\n" for key in keys.verifiers)
    click.echo(text, nl=False)
    if out:
        Path(out).write_text(text)


@audit.command("keygen")
@click.option("--name", required=True, help="The key's name, e.g. airlock.example.com/audit-2027.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="New file (0600).")
def audit_keygen(name: str, out: str) -> None:
    """Write a new checkpoint signing key to --out and print its verifier key."""
    from gateway.audit.notes import NoteError
    from gateway.services.checkpoints import generate_key_file

    try:
        key = generate_key_file(out, name)
    except (NoteError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key.verifier().to_text())


def _when(value: str | None, *, hint: str | None = None) -> Any:
    """A timezone-aware datetime from ISO 8601 (a date or a time; UTC when no offset)."""
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        message = f"{value!r} is not an ISO 8601 date or time"
        raise click.BadParameter(message, param_hint=hint) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@audit.command("export")
@click.option("--since", help="First event time (ISO 8601, inclusive; UTC when no offset).")
@click.option("--until", help="Last event time (ISO 8601, exclusive).")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory.")
def audit_export(since: str | None, until: str | None, fmt: str, out: str) -> None:
    """Write events, their covering checkpoints and a manifest for offline verification."""
    from gateway.db.engine import Database
    from gateway.services.audit_export import ExportError, export_audit

    database = Database(load_settings().database_url)
    try:
        with database.session() as session:
            manifest = export_audit(
                session, out=Path(out), fmt=fmt, since=_when(since), until=_when(until)
            )
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()
    events, covering = manifest["events"], manifest["checkpoints"]["covering"]
    click.echo(
        f"exported {events['rows']} events (seq {events['first_seq']}..{events['last_seq']}) "
        f"and {manifest['checkpoints']['count']} checkpoints to {out}"
    )
    if covering is None:
        click.echo("no checkpoint covers the last events yet: that tail is unanchored")
    else:
        click.echo(f"covering checkpoint: size {covering['size']}, key {covering['key_id']}")


@audit.command("prove")
@click.argument("seq", type=int)
@click.option("--size", type=int, help="The checkpoint's tree size (default: the first after SEQ).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the proof here (else stdout).")
def audit_prove(seq: int, size: int | None, out: str | None) -> None:
    """Print an inclusion proof that event SEQ is in a signed checkpoint (verify --proof)."""
    from gateway.db.engine import Database
    from gateway.services.audit_export import ExportError, prove_event

    database = Database(load_settings().database_url)
    try:
        with database.session() as session:
            document = prove_event(session, seq, size=size)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if out:
        Path(out).write_text(text, encoding="utf-8")
        click.echo(f"proof of event {seq} in the checkpoint of size {document['tree_size']}")
    else:
        click.echo(text, nl=False)


def _verify_offline(
    events: str | None,
    checkpoints: tuple[str, ...],
    pubkeys: tuple[str, ...],
    manifest: str | None,
    proof: str | None,
) -> None:
    """Verify exported files with public keys only: no database, no network."""
    from gateway.audit.notes import NoteError
    from gateway.audit.offline import read_verifier_keys

    try:
        keys = read_verifier_keys(Path(p) for p in pubkeys)
    except (OSError, NoteError) as exc:
        raise click.ClickException(f"cannot read the public keys: {exc}") from None
    if (checkpoints or proof) and not keys:
        raise click.UsageError("checking signatures needs --pubkey (airlock audit keys)")
    if proof:
        _verify_proof_file(Path(proof), keys)
    if events:
        _verify_export(Path(events), [Path(c) for c in checkpoints], keys, manifest)


def _verify_proof_file(path: Path, keys: Any) -> None:
    from gateway.audit.offline import verify_proof

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the proof: {exc}") from None
    found = verify_proof(document, keys)
    if not found.ok:
        click.echo(f"inclusion proof BROKEN for seq {found.seq}: {found.problem}", err=True)
        sys.exit(1)
    click.echo(f"inclusion proof OK: event {found.seq} is in the signed tree of {found.tree_size}")


def _verify_export(events: Path, checkpoints: list[Path], keys: Any, manifest: str | None) -> None:
    from gateway.audit.exports import MANIFEST_FILE
    from gateway.audit.offline import verify_files

    found = Path(manifest) if manifest else events.parent / MANIFEST_FILE
    report = verify_files(
        events, checkpoints, keys, manifest=found if manifest or found.exists() else None
    )
    if not report.ok:
        where = f" at seq {report.first_bad_seq}" if report.first_bad_seq else ""
        click.echo(
            f"audit export BROKEN{where}: {report.problem} "
            f"({report.events} events verified before it)",
            err=True,
        )
        sys.exit(1)
    span = f"seq {report.first_seq}..{report.last_seq}" if report.events else "no events"
    click.echo(
        f"audit export OK: {report.events} events ({span}), {report.checkpoints} checkpoints "
        f"matched, anchored up to seq {report.anchored_to}"
    )
    for note in report.notes:
        click.echo(f"  note: {note}")


@audit.command("forward")
def audit_forward() -> None:
    """Send the events after the SIEM cursor to AIRLOCK_AUDIT_FORWARD now (the beat task does
    it every 10 s), and print how many."""
    from gateway.audit.forward import SinkError, open_sink
    from gateway.services.forwarding import ForwardingService

    airlock = _services()
    try:
        if not airlock.settings.audit_forward:
            raise click.ClickException("AIRLOCK_AUDIT_FORWARD is not set: forwarding is off")
        sink = open_sink(airlock.settings.audit_forward)
        try:
            done = ForwardingService().forward(airlock.db, sink)
        except SinkError as exc:
            raise click.ClickException(f"the sink refused the batch: {exc}") from None
        finally:
            sink.close()
    finally:
        airlock.close()
    click.echo(f"forwarded {done.events} events; cursor at seq {done.cursor}", err=True)


@audit.command("prune")
@click.option("--dry-run", is_flag=True, help="Print what would be pruned; change nothing.")
@click.option("--at", help="Prune as of this instant (ISO 8601 with a zone), not now.")
def audit_prune(dry_run: bool, at: str | None) -> None:
    """Delete the events older than AIRLOCK_AUDIT_RETENTION_YEARS that no legal hold keeps,
    after signing a checkpoint at the cut (the beat task does it daily)."""
    from gateway.services.checkpoints import SigningKeyMissing
    from gateway.tasks import jobs

    airlock = _services()
    try:
        years = airlock.settings.audit_retention_years
        if dry_run:
            with airlock.db.session() as session:
                plan = airlock.retention.plan(session, now=_at(at), years=years)
        else:
            plan = None
            result = jobs.prune_audit(airlock, at=at)
    except (SigningKeyMissing, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        airlock.close()
    shown = plan if plan is not None else result.plan
    held = f"; a legal hold stops it before seq {shown.held_from}" if shown.held_from else ""
    click.echo(
        f"retention {years} years: events before {shown.horizon:%Y-%m-%dT%H:%M:%SZ} are due, "
        f"up to seq {shown.due}{held}; pruned so far up to seq {shown.previous}"
    )
    if plan is not None:
        click.echo(f"dry run: would prune seq {plan.previous + 1} to {plan.cut} ({plan.count})")
    else:
        cut = result.cuts[-1][0] if result.cuts else shown.previous
        click.echo(f"pruned {result.deleted} events; the chain now starts after seq {cut}")


def _at(text: str | None) -> Any:
    from datetime import datetime

    from gateway.db.models import utcnow

    if text is None:
        return utcnow()
    found = datetime.fromisoformat(text)
    if found.tzinfo is None:
        raise ValueError(f"'{text}' names no time zone; write it as 2036-01-01T00:00:00Z")
    return found


@audit.group("holds")
def audit_holds() -> None:
    """Legal holds: a held user's or model's events are never pruned."""


@audit_holds.command("list")
@click.option("--active", is_flag=True, help="Only holds not yet released.")
def audit_holds_list(active: bool) -> None:
    """Print every legal hold as JSON."""
    airlock = _services()
    try:
        with airlock.db.session() as session:
            holds = airlock.legal_holds.list(session, principal=None, active_only=active)
            _print([_hold_out(h) for h in holds])
    finally:
        airlock.close()


@audit_holds.command("place")
@click.option("--org", required=True, help="The organization the hold is for (slug).")
@click.option("--kind", required=True, type=click.Choice(["model", "user"]))
@click.option("--subject", required=True, help="A username, or a model as org/name.")
@click.option("--reason", required=True, help="Why (a case reference), recorded and audited.")
def audit_holds_place(org: str, kind: str, subject: str, reason: str) -> None:
    """Place a legal hold (audited as legal_hold:place, by the operator)."""
    airlock = _services()
    try:
        with airlock.db.session() as session:
            hold = _domain(
                lambda: airlock.legal_holds.place(
                    session, principal=None, org=org, kind=kind, subject=subject, reason=reason
                )
            )
            _print(_hold_out(hold))
    finally:
        airlock.close()


@audit_holds.command("release")
@click.argument("hold_id", type=int)
def audit_holds_release(hold_id: int) -> None:
    """Release a legal hold (audited as legal_hold:release, by the operator)."""
    airlock = _services()
    try:
        with airlock.db.session() as session:
            hold = _domain(
                lambda: airlock.legal_holds.release(session, principal=None, hold_id=hold_id)
            )
            _print(_hold_out(hold))
    finally:
        airlock.close()


def _hold_out(hold: Any) -> dict[str, Any]:
    return {
        "id": hold.id,
        "org_id": hold.org_id,
        "kind": hold.kind,
        "subject_id": hold.subject_id,
        "reason": hold.reason,
        "created_by": hold.created_by,
        "created_at": hold.created_at.isoformat(),
        "released_at": hold.released_at.isoformat() if hold.released_at else None,
    }


def _api(endpoint: str | None, token: str | None, method: str, path: str, body: Any = None) -> Any:
    """One JSON call to the API with the environment's client; a failure ends the command."""
    client = client_from_env(endpoint, token)
    return _call(lambda: client.request(method, path, body))


def _call(action: Any) -> Any:
    try:
        return action()
    except ApiError as exc:
        _fail(exc)
    except OSError as exc:
        raise click.ClickException(f"cannot reach Airlock: {exc}") from None


def _fail(exc: ApiError) -> None:
    click.echo(f"error {exc.status}: {exc}", err=True)
    for item in exc.body.get("errors", []) or []:
        where = f"line {item['line']}: " if item.get("line") else ""
        click.echo(f"  {where}{item.get('path', '')}: {item.get('message', '')}", err=True)
    for reason in exc.body.get("reasons", []) or []:
        click.echo(f"  [{reason.get('code')}] {reason.get('message')}", err=True)
    sys.exit(1)


def _print(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


if __name__ == "__main__":
    main()
