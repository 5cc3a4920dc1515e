"""Signed blob URLs: signature, expiry and method binding; Range; one cheap DB read."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, select

from gateway.api.blobs import ClosingFile, cork
from gateway.db.models import Model, RevisionFile
from gateway.services.signing import BlobClaim
from tests.api.hubkit import FILES, REPO, Hub, make_hub, sha256
from tests.factories import World

PATH = "model.safetensors"
DATA = FILES[PATH]


@pytest.fixture
def hub(client: FlaskClient, world: World) -> Hub:
    return make_hub(client, world)


def file_row(hub: Hub, path: str = PATH) -> tuple[RevisionFile, str]:
    with hub.world.airlock.db.session() as s:
        model = s.scalars(select(Model).where(Model.id == hub.model.id)).one()
        assert model.head_revision is not None
        file = next(f for f in model.head_revision.files if f.path == path)
        return file, model.head_revision.commit_id


def signed(hub: Hub, *, method: str = "GET", expires_in: int = 600, path: str = PATH) -> str:
    """A blob URL signed with the deployment's key, as DownloadService would sign it."""
    file, commit = file_row(hub, path)
    claim = BlobClaim(
        file.id,
        file.sha256,
        commit,
        hub.researcher.user.id,
        hub.grant.id,
        method,
        int(time.time()) + expires_in,
    )
    url = urlsplit(hub.world.airlock.signer.url("http://airlock.test", claim, path))
    return f"{url.path}?{url.query}"


def with_query(url: str, **changes: str) -> str:
    path, _, query = url.partition("?")
    params = dict(parse_qsl(query))
    params.update(changes)
    return f"{path}?{urlencode({k: v for k, v in params.items() if v is not None})}"


def assert_forbidden(response, words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 403, response.status_code
    assert "X-Error-Code" not in response.headers
    assert words in response.headers["X-Error-Message"]
    assert response.headers["X-Request-Id"]


def test_get_serves_the_bytes_with_hub_headers(hub: Hub) -> None:
    url = hub.signed_url(PATH)
    response = hub.fetch(url)
    assert response.status_code == 200
    assert response.data == DATA
    assert response.headers["ETag"] == f'"{sha256(DATA)}"'
    assert response.headers["X-Linked-Etag"] == f'"{sha256(DATA)}"'
    assert response.headers["X-Linked-Size"] == str(len(DATA))
    assert response.headers["X-Repo-Commit"] == file_row(hub)[1]
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Length"] == str(len(DATA))
    assert "Content-Encoding" not in response.headers
    assert "no-store" in response.headers["Cache-Control"]
    assert response.headers["X-Request-Id"]


def test_get_is_never_compressed(hub: Hub) -> None:
    response = hub.fetch(hub.signed_url(PATH), headers={"Accept-Encoding": "gzip, br"})
    assert response.status_code == 200 and "Content-Encoding" not in response.headers
    assert response.data == DATA


def test_a_get_signed_url_also_answers_head(hub: Hub) -> None:
    response = hub.fetch(hub.signed_url(PATH), method="HEAD")
    assert response.status_code == 200 and response.data == b""
    assert response.headers["X-Linked-Size"] == str(len(DATA))
    assert response.headers["Content-Length"] == str(len(DATA))


def test_range_requests(hub: Hub) -> None:
    url = hub.signed_url(PATH)
    response = hub.fetch(url, headers={"Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.data == DATA[:10]
    assert response.headers["Content-Range"] == f"bytes 0-9/{len(DATA)}"
    response = hub.fetch(url, headers={"Range": "bytes=10-"})
    assert response.status_code == 206 and response.data == DATA[10:]
    response = hub.fetch(url, headers={"Range": "bytes=-5"})
    assert response.status_code == 206 and response.data == DATA[-5:]
    assert response.headers["X-Linked-Etag"] == f'"{sha256(DATA)}"'


def test_unsatisfiable_range_is_416_with_the_total(hub: Hub) -> None:
    response = hub.fetch(hub.signed_url(PATH), headers={"Range": f"bytes={len(DATA)}-"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert response.headers["X-Request-Id"]


def test_the_url_is_reusable_until_it_expires(hub: Hub) -> None:
    url = hub.signed_url(PATH)
    assert hub.fetch(url).data == DATA
    assert hub.fetch(url, headers={"Range": "bytes=5-"}).data == DATA[5:]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("s", "A" * 43),
        ("h", "0" * 64),
        ("c", "0" * 40),
        ("u", "999"),
        ("g", "999"),
        ("e", str(int(time.time()) + 10**6)),
        ("m", "HEAD"),
        ("t", "999"),
        ("o", "staged"),
        ("l", "1"),
    ],
    ids=list("shcugemtol"),  # the same ids in every process (the expiry's value moves)
)
def test_tampered_urls_are_refused(hub: Hub, param: str, value: str) -> None:
    response = hub.fetch(with_query(hub.signed_url(PATH), **{param: value}))
    assert_forbidden(response, "signature is invalid")


@pytest.mark.parametrize("param", ["s", "h", "c", "u", "g", "m", "e", "t", "o", "l"])
def test_urls_missing_a_part_are_refused(hub: Hub, param: str) -> None:
    response = hub.fetch(with_query(hub.signed_url(PATH), **{param: None}))  # type: ignore[arg-type]
    assert_forbidden(response, "incomplete or malformed")


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("e", "soon"),
        ("u", "x"),
        ("m", "PUT"),
        ("h", "Z" * 64),
        ("c", "abc"),
        ("h", "a|b"),
        ("t", "x"),
        ("o", "copy"),
        ("l", "yes"),
    ],
)
def test_malformed_parts_are_refused(hub: Hub, param: str, value: str) -> None:
    response = hub.fetch(with_query(hub.signed_url(PATH), **{param: value}))
    assert_forbidden(response, "incomplete or malformed")


def test_the_url_is_bound_to_its_file(hub: Hub) -> None:
    url = hub.signed_url(PATH)
    other, _ = file_row(hub, "config.json")
    path, _, query = url.partition("?")
    swapped = path.replace(f"/blobs/{file_row(hub)[0].id}/", f"/blobs/{other.id}/")
    assert_forbidden(hub.fetch(f"{swapped}?{query}"), "signature is invalid")
    renamed = path.rsplit("/", 1)[0] + "/config.json"
    assert_forbidden(hub.fetch(f"{renamed}?{query}"), "file name does not match")


def test_expired_url_is_refused(hub: Hub) -> None:
    assert_forbidden(hub.fetch(signed(hub, expires_in=-1)), "expired")
    assert_forbidden(hub.fetch(signed(hub, expires_in=-1), method="HEAD"), "expired")


def test_head_signed_url_may_only_head(hub: Hub) -> None:
    url = signed(hub, method="HEAD")
    response = hub.fetch(url, method="HEAD")
    assert response.status_code == 200
    assert response.headers["X-Linked-Etag"] == f'"{sha256(DATA)}"'
    assert_forbidden(hub.fetch(url), "signed for HEAD, not GET")


def test_a_url_signed_with_another_key_is_refused(hub: Hub) -> None:
    from gateway.services.signing import BlobSigner

    file, commit = file_row(hub)
    claim = BlobClaim(
        file.id, file.sha256, commit, hub.researcher.user.id, hub.grant.id, "GET", 2**40
    )
    url = urlsplit(BlobSigner("another-secret").url("http://airlock.test", claim, PATH))
    assert_forbidden(hub.fetch(f"{url.path}?{url.query}"), "signature is invalid")


def test_unknown_methods_are_not_served(hub: Hub) -> None:
    response = hub.fetch(hub.signed_url(PATH), method="POST")
    assert response.status_code == 405


def test_blob_needs_exactly_one_database_read_and_no_grant_lookup(hub: Hub) -> None:
    url = hub.signed_url(PATH)
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    engine = hub.world.airlock.db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = hub.fetch(url, headers={"Authorization": f"Bearer {hub.researcher.token}"})
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200
    reads = [s for s in statements if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    assert len(reads) == 1, statements
    assert "grants" not in reads[0] and "api_tokens" not in reads[0]


def test_outstanding_urls_live_until_their_ttl_after_revocation(hub: Hub) -> None:
    """By design: revocation stops new tickets; issued URLs die within their TTL (minutes)."""
    url = hub.signed_url(PATH)
    with hub.world.airlock.db.session() as s:
        hub.world.airlock.access.revoke_grant(
            s, principal=hub.publisher.principal, grant_id=hub.grant.id, reason="ended"
        )
    assert hub.get(f"/{REPO}/resolve/main/{PATH}", hub.researcher).status_code == 403
    assert hub.fetch(url).status_code == 200


def test_missing_bytes_are_503_not_a_traceback(hub: Hub) -> None:
    url = hub.signed_url(PATH)
    file, _ = file_row(hub)
    hub.world.airlock.storage.delete(file.storage_key)
    response = hub.fetch(url)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_url_query_is_what_urlencode_would_write(staged: bool, method: str) -> None:
    from gateway.services.signing import BlobSigner

    claim = BlobClaim(
        7, "ab" * 32, "cd" * 20, 12, 345, method, 2_000_000_000, 6789, staged, not staged
    )
    signer = BlobSigner("a secret")
    url = urlsplit(signer.url("http://airlock.test", claim, "dir/a b+c.safetensors"))
    assert url.path == "/blobs/7/a%20b%2Bc.safetensors"
    assert url.query == urlencode({**claim.query(), "s": signer.signature(claim)})
    assert BlobClaim.from_query(7, dict(parse_qsl(url.query))) == claim


# -- TCP_CORK under gunicorn ----------------------------------------------------------------------
@pytest.fixture
def connected() -> Iterator[socket.socket]:
    """The server side of a real loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        try:
            yield server
        finally:
            server.close()
            client.close()


def corked(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)


def test_a_blob_body_goes_out_corked_and_the_socket_is_uncorked_when_the_file_closes(
    connected: socket.socket, tmp_path: Path
) -> None:
    order: list[str] = []
    uncork = cork({"gunicorn.socket": connected})
    assert uncork is not None and corked(connected) == 1
    (tmp_path / "blob").write_bytes(b"x" * 10)
    file = ClosingFile(
        tmp_path / "blob", lambda: order.append(f"lease freed, cork {corked(connected)}")
    )
    file.also_on_close(uncork)
    file.close()
    file.close()  # a second close reports nothing again
    assert order == ["lease freed, cork 0"] and corked(connected) == 0


def test_a_failing_end_step_does_not_skip_the_others(
    connected: socket.socket, tmp_path: Path
) -> None:
    uncork = cork({"gunicorn.socket": connected})
    (tmp_path / "blob").write_bytes(b"x")
    file = ClosingFile(tmp_path / "blob", lambda: 1 / 0)  # type: ignore[func-returns-value]
    file.also_on_close(uncork)
    file.close()
    assert corked(connected) == 0


def test_no_cork_without_a_socket_of_ours_and_none_after_the_client_left(
    connected: socket.socket,
) -> None:
    assert cork({}) is None  # another WSGI server (the demo's, the test client)
    uncork = cork({"gunicorn.socket": connected})
    assert uncork is not None
    connected.close()
    uncork()  # the socket is gone: nothing to flush, no error
