"""Bootstrapping a fresh deployment with `airlock admin`: the token it prints works, once."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.app import create_app
from gateway.cli import main
from gateway.db.migrate import upgrade
from gateway.settings import load_settings


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {"AIRLOCK_DATA_DIR": str(tmp_path), "AIRLOCK_DATABASE_URL": ""}
    upgrade(load_settings(values).database_url)
    return values


def admin(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["admin", *args], env=env)
    return result.exit_code, result.output


def test_bootstrap_a_publisher_whose_token_works(env: dict[str, str]) -> None:
    assert admin(env, "create-org", "acme", "--name", "Acme", "--hq-country", "US")[0] == 0
    code, output = admin(
        env,
        "create-user",
        "alice",
        "--email",
        "a@example.org",
        "--org",
        "acme",
        "--role",
        "publisher",
    )
    assert code == 0 and "as publisher of acme" in output
    code, output = admin(env, "issue-token", "alice", "--scope", "models:write", "--days", "7")
    token = output.strip()
    assert code == 0 and token.startswith("alk_")
    client = create_app(load_settings(env)).test_client()
    response = client.post(
        "/api/v1/models",
        json={"repo_id": "acme/first"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create-org", "Not A Slug", "--name", "x"], "invalid organization"),
        (
            ["create-user", "bob", "--email", "b@x.org", "--org", "nope", "--role", "reviewer"],
            "no organization 'nope'",
        ),
        (["create-user", "bob", "--email", "b@x.org", "--org", "acme"], "go together"),
        (["issue-token", "ghost", "--scope", "models:read"], "no user 'ghost'"),
        (["issue-token", "carol", "--scope", "admin:everything"], "scopes are"),
        (["issue-token", "carol", "--scope", "models:write"], "do not permit"),
    ],
)
def test_admin_refuses_bad_input_clearly(
    env: dict[str, str], args: list[str], message: str
) -> None:
    admin(env, "create-org", "acme", "--name", "Acme")
    admin(env, "create-user", "carol", "--email", "c@example.org")
    code, output = admin(env, *args)
    assert code != 0
    assert message in output
