"""deploy/ without a Docker engine: the files parse, and every variable, command, file and probe
they name exists (settings.py reads it, `airlock --help` lists it, the repository holds it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT, cli_command_exists

K8S = DEPLOY / "k8s"
GUNICORN_CONF = "/etc/airlock/gunicorn.conf.py"
# Variables the third-party images read themselves (postgres, minio), never an Airlock process.
THIRD_PARTY = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
THIRD_PARTY |= {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.stem != "kustomization":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def airlock_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if s.get("image") == "airlock:latest"}


def workloads() -> dict[str, dict[str, Any]]:
    """Pod specs of every Deployment and Job, by name."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in k8s_documents()
        if d["kind"] in ("Deployment", "Job")
    }


def assert_runnable(argv: list[str]) -> None:
    """An Airlock container runs `airlock <real command>` or gunicorn with the shipped config."""
    if argv[0] == "gunicorn":
        assert argv[1:3] == ["--config", GUNICORN_CONF], argv
        return
    assert argv[0] == "airlock", argv
    assert cli_command_exists(argv[1:]), f"`{' '.join(argv)}` is not an airlock command"


def test_compose_runs_every_part(known_variables: frozenset[str]) -> None:
    services = compose()["services"]
    wanted = {"postgres", "redis", "minio", "bucket", "migrate", "gateway", "worker", "beat"}
    assert wanted | {"nginx"} <= set(services)
    assert set(airlock_services()) == {"migrate", "gateway", "worker", "beat"}
    commands = {name: s["command"] for name, s in airlock_services().items()}
    assert commands["migrate"] == ["airlock", "db", "upgrade"]
    assert commands["gateway"][0] == "gunicorn"
    assert commands["worker"][:2] == ["airlock", "worker"]
    assert commands["beat"] == ["airlock", "beat"]
    for argv in commands.values():
        assert_runnable(argv)
    for name in ("gateway", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name


def test_compose_sets_only_variables_airlock_reads(known_variables: frozenset[str]) -> None:
    for name, service in airlock_services().items():
        unknown = set(service["environment"]) - known_variables
        assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"
    for name, service in compose()["services"].items():
        if name in airlock_services():
            continue
        env = service.get("environment") or {}
        assert set(env) <= THIRD_PARTY, f"{name}: {sorted(set(env) - THIRD_PARTY)}"


def test_compose_wires_nginx_as_the_trusted_proxy() -> None:
    services = compose()["services"]
    env = services["gateway"]["environment"]
    nginx = services["nginx"]
    address = nginx["networks"]["airlock"]["ipv4_address"]
    assert env["AIRLOCK_TRUSTED_PROXIES"] == address
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    conf = (DEPLOY / "nginx.conf").read_text()
    assert f"proxy_set_header {env['AIRLOCK_GEO_HEADER']} " in conf
    assert "server gateway:8000;" in conf
    listen = re.search(r"listen (\d+);", conf)
    assert listen and f"{listen.group(1)}:{listen.group(1)}" in nginx["ports"]
    bucket = env["AIRLOCK_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    assert f"local/{bucket}" in services["bucket"]["command"][0]
    assert services["gateway"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_compose_secrets_come_from_the_environment_not_the_file() -> None:
    env = airlock_services()["gateway"]["environment"]
    for key in (
        "AIRLOCK_SECRET_KEY",
        "AIRLOCK_S3_SECRET_ACCESS_KEY",
        "AIRLOCK_AUDIT_SIGNING_KEY",
        "AIRLOCK_FINGERPRINT_SECRET",
    ):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", env[key]), key
    assert ":${POSTGRES_PASSWORD:?" in env["AIRLOCK_DATABASE_URL"]


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of every instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_a_slim_non_root_image_of_the_package(
    known_variables: frozenset[str],
) -> None:
    steps = dockerfile()
    bases = [args for op, args in steps if op == "FROM"]
    assert bases and all(re.match(r"python:3\.1[1-9]-slim\b", b) for b in bases)
    user = [args for op, args in steps if op == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "pip wheel" in runs and "pip install" in runs
    for op, args in steps:
        if op == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
    assert f"deploy/gunicorn.conf.py {GUNICORN_CONF}" in [a for o, a in steps if o == "COPY"]
    envs = " ".join(args for op, args in steps if op == "ENV")
    names = set(re.findall(r"([A-Z_]+)=", envs)) - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert names <= known_variables, sorted(names - known_variables)
    cmd = [args for op, args in steps if op == "CMD"][-1]
    assert_runnable(yaml.safe_load(cmd))


def test_dockerignore_lets_the_build_see_what_it_copies() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for op, args in dockerfile():
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, source


def test_kubernetes_has_the_gateway_worker_beat_and_a_migration_job() -> None:
    docs = k8s_documents()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "airlock-gateway"),
        ("Deployment", "airlock-worker"),
        ("Deployment", "airlock-beat"),
        ("Job", "airlock-migrate"),
        ("Service", "airlock-gateway"),
        ("ConfigMap", "airlock-config"),
        ("Secret", "airlock-secrets"),
    } <= kinds
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.stem != "kustomization")
    beat = next(d for d in docs if d["metadata"]["name"] == "airlock-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    """Strict validation against the Kubernetes API's own schemas: no unknown or misplaced key."""
    import kubernetes_validate  # a dev dependency: no skip when it is missing

    version = kubernetes_validate.latest_version()
    for doc in k8s_documents():
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_commands_and_variables_are_real(known_variables: frozenset[str]) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_documents()}
    config = set(docs[("ConfigMap", "airlock-config")]["data"])
    secret = set(docs[("Secret", "airlock-secrets")]["stringData"])
    assert config | secret <= known_variables, sorted((config | secret) - known_variables)
    assert not config & secret
    for name, pod in workloads().items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert_runnable(container["command"])
            env = {e["name"] for e in container.get("env", [])}
            assert env <= known_variables, (name, sorted(env - known_variables))
            refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
            assert refs == {"airlock-config", "airlock-secrets"}, name


def test_kubernetes_gateway_probes_readiness_and_liveness() -> None:
    gateway = workloads()["airlock-gateway"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports["http"] == 8000  # gunicorn.conf.py binds 0.0.0.0:8000
    assert "0.0.0.0:8000" in (DEPLOY / "gunicorn.conf.py").read_text()
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    multiproc = next(e["value"] for e in gateway["env"] if e["name"] == "PROMETHEUS_MULTIPROC_DIR")
    assert multiproc in mounts, "each pod gets its own metrics directory"


def test_kubernetes_worker_serves_its_metrics_port() -> None:
    worker = workloads()["airlock-worker"]["containers"][0]
    env = {e["name"]: e["value"] for e in worker["env"]}
    port = int(env["AIRLOCK_WORKER_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": port} in worker["ports"]
    assert env["PROMETHEUS_MULTIPROC_DIR"] in {m["mountPath"] for m in worker["volumeMounts"]}


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_no_real_secret_is_committed(path: str) -> None:
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        if doc and doc.get("kind") == "Secret":
            assert all("CHANGE-ME" in v for v in doc["stringData"].values())


def test_readme_production_commands_exist() -> None:
    """Every `airlock ...` command the README's Production section shows is a real command."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Production", 1)[1].split("\n## ", 1)[0]
    shown = [
        shlex.split(line.split("#", 1)[0])
        for line in re.findall(r"^\s*(airlock [^\n]+)", section, flags=re.MULTILINE)
    ]
    assert shown, "the Production section shows how to start each part"
    for argv in shown:
        assert cli_command_exists(argv[1:]), argv


def test_deploy_paths_named_in_docs_exist() -> None:
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        for named in set(re.findall(r"deploy/[\w./-]+\w", doc.read_text())):
            assert (ROOT / named).exists(), f"{doc.name} names {named}, which does not exist"


def test_manifests_hold_no_machine_paths() -> None:
    for path in [*DEPLOY.rglob("*"), Path("README.md")]:
        if path.is_file():
            text = (ROOT / path).read_text() if not path.is_absolute() else path.read_text()
            assert "/home/" not in text and "/work/" not in text, path
