"""Workflow admin routes on a real gateway (uvicorn, SQLite registry, a real Redis) over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from klieg import cli
from klieg.admin import AdminClient
from klieg.exceptions import InvalidRequestError, NotFoundError, ValidationError
from klieg.workflow import load_workflow
from klieg_platform import keys
from klieg_platform.workflows.store import revision_id, stored_workflow
from tests.conftest import MACHINE_REDIS_URL
from tests.klieg_platform.gateway.conftest import Gateway

pytestmark = pytest.mark.timeout(60)

MOVIE = """
input:
  type: object
  properties: {digits: {type: string}}
  required: [digits]
nodes:
  gen: {app: local/digits, input: {digits: $input.digits}}
  strip: {app: local/imagetools/grid, input: {images: $gen.digits, columns: 8}}
output: {image: $strip.image}
"""


def put_raw(client: AdminClient, name: str, document: Any, alias: str = "latest") -> httpx.Response:
    return client.http.put(f"/workflows/{name}", json={"document": document, "alias": alias})


def test_create_is_idempotent_and_a_change_moves_the_alias(gateway: Gateway) -> None:
    admin = gateway.admin
    first = admin.put_workflow("digits-movie", MOVIE)
    assert first["created"] is True
    assert first["name"] == "digits-movie" and first["alias"] == "latest"
    assert first["revision"].startswith("wf-") and len(first["revision"]) == 27
    again = admin.put_workflow("digits-movie", load_workflow(MOVIE).to_dict())
    assert (again["created"], again["revision"]) == (False, first["revision"])
    as_text = put_raw(admin, "digits-movie", MOVIE)
    assert as_text.status_code == 200 and as_text.json()["revision"] == first["revision"]

    changed = MOVIE.replace("columns: 8", "columns: 4")
    second = admin.put_workflow("digits-movie", changed)
    assert second["created"] is True and second["revision"] != first["revision"]
    assert second["previous"] == first["revision"]

    shown = admin.get_workflow("digits-movie")
    assert shown["aliases"] == {"latest": second["revision"]}
    assert [r["id"] for r in shown["revisions"]] == [second["revision"], first["revision"]]
    newest = shown["revisions"][0]["document"]
    assert newest["name"] == "digits-movie"
    assert newest["nodes"]["strip"]["input"]["columns"] == 4
    assert load_workflow(newest) == load_workflow(changed).model_copy(
        update={"name": "digits-movie"}
    )

    listed = admin.list_workflows()
    assert [(w["name"], w["revisions"], w["visibility"]) for w in listed] == [
        ("digits-movie", 2, "private")
    ]
    assert listed[0]["aliases"] == {"latest": second["revision"]}
    assert all(not a["name"].startswith("workflows") for a in admin.apps())


def test_rollback_and_alias(gateway: Gateway) -> None:
    admin = gateway.admin
    r1 = admin.put_workflow("flow", MOVIE)["revision"]
    r2 = admin.put_workflow("flow", MOVIE.replace("columns: 8", "columns: 2"))["revision"]
    back = admin.rollback_workflow("flow")
    assert (back["revision"], back["previous"], back["alias"]) == (r1, r2, "latest")
    with pytest.raises(NotFoundError):
        admin.rollback_workflow("flow")
    moved = admin.set_workflow_alias("flow", "prod", r2)
    assert (moved["revision"], moved["previous"]) == (r2, None)
    assert admin.set_workflow_alias("flow", "stable", "prod")["revision"] == r2
    assert admin.get_workflow("flow")["aliases"] == {"latest": r1, "prod": r2, "stable": r2}
    with pytest.raises(NotFoundError):
        admin.set_workflow_alias("flow", "prod", "wf-nope")
    query_style = admin.http.post("/workflows/flow/rollback", params={"alias": "prod"})
    assert query_style.status_code == 404  # prod has nothing earlier

    found = stored_workflow(gateway.registry, "local", "flow", "prod")
    assert found is not None
    app, rev, doc = found
    assert (app.name, rev.id, doc.nodes["strip"].input["columns"]) == ("workflows/flow", r2, 2)
    assert rev.id == revision_id("local", "flow", doc)
    assert stored_workflow(gateway.registry, "local", "flow", "nope") is None
    assert stored_workflow(gateway.registry, "local", "ghost") is None


def test_alias_move_is_published(gateway: Gateway) -> None:
    sub = redis.Redis.from_url(MACHINE_REDIS_URL).pubsub()
    sub.subscribe(keys.channel(keys.ALIAS_CHANNEL, int(MACHINE_REDIS_URL.rsplit("/", 1)[1])))
    try:
        assert sub.get_message(timeout=5) is not None  # the subscribe confirmation
        gateway.admin.put_workflow("pub", MOVIE)
        seen = []
        for _ in range(50):
            msg = sub.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                seen.append(msg["data"])
            if b"local/workflows/pub" in seen:
                break
        assert b"local/workflows/pub" in seen
    finally:
        sub.close()


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            "nodes: {a: {app: local/digits, input: {x: $b}}, b: {app: local/digits, input: "
            "{x: $a.y}}}\noutput: $a",
            "cycle: a -> b -> a",
        ),
        (
            "nodes: {gen: {app: local/digits}, strip: {app: local/imagetools, input: "
            "{i: $gn.digits}}}\noutput: $strip",
            "node 'strip' refers to unknown node 'gn' in $gn.digits",
        ),
        ("nodes: {gen: {app: local/nope}}\noutput: $gen", "node 'gen': app local/nope not found"),
        ("nodes: {gen: {app: local}}\noutput: $gen", "node 'gen': app must be"),
        ("nodes: [1", "does not parse"),
    ],
)
def test_invalid_documents_are_422_naming_the_node(
    gateway: Gateway, document: str, expected: str
) -> None:
    r = put_raw(gateway.admin, "bad", document)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "ValidationError"
    assert expected in r.json()["detail"]
    assert gateway.admin.list_workflows() == []


def test_bad_bodies_and_names(gateway: Gateway) -> None:
    admin = gateway.admin
    missing = admin.http.put("/workflows/w", json={"alias": "latest"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "document"]
    for name in ("Bad", "rollback", "x" * 60):
        with pytest.raises(InvalidRequestError):
            admin.put_workflow(name, MOVIE)
    with pytest.raises(ValidationError, match="alias"):  # the body's field: 422
        admin.put_workflow("w", MOVIE, alias="Bad Alias")
    with pytest.raises(NotFoundError):
        admin.get_workflow("ghost")
    assert admin.http.get("/workflows").status_code == 200
    assert httpx.get(f"{gateway.url}/workflows").status_code == 401


def test_other_tenants_cannot_see_or_use_private_things(gateway: Gateway) -> None:
    gateway.admin.put_workflow("mine", MOVIE)
    other = gateway.other
    assert other.list_workflows() == []
    with pytest.raises(NotFoundError):
        other.get_workflow("mine")
    with pytest.raises(NotFoundError):
        other.rollback_workflow("mine")
    with pytest.raises(ValidationError, match="node 'gen': app local/digits not found"):
        other.put_workflow("theirs", MOVIE)

    gateway.admin.share("digits", "public")
    gateway.admin.share("imagetools", "shared", ["other"])
    stored = other.put_workflow("theirs", MOVIE)
    assert stored["created"] is True and stored["owner"] == "other"
    mine = gateway.admin.get_workflow("mine")["revisions"][0]["id"]
    assert stored["revision"] != mine  # same document, other owner: a distinct revision

    shared = gateway.admin.share_workflow("mine", "shared", ["other"])
    assert (shared["visibility"], shared["shared_with"]) == ("shared", ["other"])
    assert gateway.admin.get_workflow("mine")["shared_with"] == ["other"]
    assert [w["visibility"] for w in gateway.admin.list_workflows()] == ["shared"]


def klieg(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    gateway: Gateway,
    *args: str,
) -> tuple[int, str, str]:
    monkeypatch.setenv("KLIEG_URL", gateway.url)
    monkeypatch.setenv("KLIEG_KEY", gateway.admin.key or "")
    with pytest.raises(SystemExit) as done:
        cli.main(list(args))
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def test_cli_workflow_commands(
    gateway: Gateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = tmp_path / "movie.yaml"
    file.write_text(MOVIE)
    code, out, err = klieg(monkeypatch, capsys, gateway, "workflow", "create", str(file))
    assert code == 0, err
    assert out.startswith("workflow movie revision wf-") and "created" in out
    rev = out.split("revision ")[1].split()[0]
    code, out, _ = klieg(monkeypatch, capsys, gateway, "workflow", "create", str(file))
    assert "unchanged" in out and rev in out
    file.write_text("name: named\n" + MOVIE.replace("columns: 8", "columns: 3"))
    args = ("workflow", "create", str(file), "--name", "movie", "--alias", "beta")
    code, out, _ = klieg(monkeypatch, capsys, gateway, *args)
    beta = out.split("revision ")[1].split()[0]
    assert code == 0 and beta != rev and "beta -> " in out
    code, out, _ = klieg(monkeypatch, capsys, gateway, "workflow", "create", str(file))
    assert code == 0 and out.startswith("workflow named ")

    code, out, _ = klieg(monkeypatch, capsys, gateway, "workflow", "list")
    assert "movie  2 revision(s)  private" in out and f"latest={rev}" in out
    code, out, _ = klieg(monkeypatch, capsys, gateway, "workflow", "show", "movie")
    assert f"{rev}  latest" in out and "app: local/imagetools/grid" in out
    code, out, _ = klieg(monkeypatch, capsys, gateway, "workflow", "alias", "movie", "latest", beta)
    assert f"latest -> {beta} (was {rev})" in out
    code, out, _ = klieg(monkeypatch, capsys, gateway, "workflow", "rollback", "movie")
    assert f"latest -> {rev} (was {beta})" in out
    code, _, err = klieg(monkeypatch, capsys, gateway, "workflow", "show", "ghost")
    assert code == 1 and "NotFoundError" in err
    file.write_text("nodes: {a: {app: local/digits, input: {x: $b}}}\noutput: $a")
    code, _, err = klieg(monkeypatch, capsys, gateway, "workflow", "create", str(file))
    assert code == 1 and "node 'a' refers to unknown node 'b'" in err
