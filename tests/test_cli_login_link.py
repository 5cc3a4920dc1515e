"""`airlock admin login-link USER`: prints a one-time browser sign-in link that works once."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from gateway.app import create_app
from gateway.cli import main
from gateway.db.migrate import upgrade
from gateway.settings import load_settings
from tests.web.webkit import redeem


def test_login_link_signs_in_once(tmp_path: Path) -> None:
    env = {
        "AIRLOCK_DATA_DIR": str(tmp_path),
        "AIRLOCK_DATABASE_URL": "",
        "AIRLOCK_PUBLIC_URL": "http://airlock.test",
    }
    upgrade(load_settings(env).database_url)
    runner = CliRunner()
    created = runner.invoke(main, ["admin", "create-user", "rob", "--email", "r@x.org"], env=env)
    assert created.exit_code == 0, created.output
    printed = runner.invoke(main, ["admin", "login-link", "rob", "--minutes", "5"], env=env)
    assert printed.exit_code == 0, printed.output
    link = printed.stdout.strip()
    assert link.startswith("http://airlock.test/ui/login/link?token=all_")
    assert "expires in 5 minutes" in printed.stderr
    client = create_app(load_settings(env)).test_client()
    path = link.removeprefix("http://airlock.test")
    assert redeem(client, path).status_code == 302
    assert "rob" in client.get("/ui/").text
    assert redeem(create_app(load_settings(env)).test_client(), path).status_code == 400
    ghost = runner.invoke(main, ["admin", "login-link", "ghost"], env=env)
    assert ghost.exit_code != 0 and "no user 'ghost'" in ghost.output
