"""The server side of ``{owner}/{app}[@ref]`` on arbitrary text, on SQLite and on PostgreSQL:
``GatewayState.resolve`` (and ``registry.revision_of`` under it) either returns the revision the
text names, or refuses it with ``NotFoundError``; nothing else (no database error, whatever the
text holds: NUL, control characters, surrogates' neighbours, very long refs). Deterministic
(``derandomize``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from klieg.exceptions import NotFoundError
from klieg_platform.config import Settings
from klieg_platform.gateway.state import GatewayState
from klieg_platform.packager import Packager
from klieg_platform.registry import Registry, Tenant
from klieg_platform.services import open_broker, open_store
from tests.conftest import MACHINE_REDIS_URL
from tests.postgres import registry_url

pytestmark = pytest.mark.timeout(300)

checked = settings(derandomize=True, database=None, deadline=None, max_examples=200)
SPEC = {"name": "echo", "functions": []}


@dataclass
class World:
    state: GatewayState
    registry: Registry
    caller: Tenant
    revisions: dict[str, str]
    """What each ref of local/echo names: its aliases and its revision ids."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    home = tmp_path_factory.mktemp("resolve")
    with contextlib.ExitStack() as stack:
        url = registry_url(request.param, home, stack, "klieg_resolve")
        config = Settings(home=Path(home), redis_url=MACHINE_REDIS_URL, database_url=url)
        registry = Registry(url)
        registry.create_all()
        stack.callback(registry.close)
        local = registry.create_tenant("local", "enterprise", admin=True)
        app = registry.ensure_app(local.id, "echo")
        refs: dict[str, str] = {}
        for rid in ("rev-1", "rev-2"):
            registry.put_revision(app, rid, SPEC, "code", "env", "3.11", "")
            refs[rid] = rid
        registry.set_alias(app, "latest", "rev-2")
        registry.set_alias(app, "prod", "rev-1")
        refs.update(latest="rev-2", prod="rev-1")
        state = GatewayState(
            config, open_broker(config), registry, open_store(config), Packager(config)
        )
        yield World(state, registry, local, refs)


def _resolve(world: World, owner: str, app_ref: str) -> str | None:
    """The revision id ``owner/app_ref`` resolves to; None when it is refused as not found."""
    try:
        resolved = asyncio.run(world.state.resolve(world.caller, owner, app_ref))
    except NotFoundError:
        return None
    return resolved.revision.id


@checked
@given(owner=st.text(), app_ref=st.text())
@example(owner="local\x00", app_ref="echo")
@example(owner="local", app_ref="echo\x00")
@example(owner="local", app_ref="echo@\x00")
@example(owner="local", app_ref="echo@latest\x00")
@example(owner="local", app_ref="echo@" + "r" * 300)
@example(owner="local", app_ref="echo@latest\n")
@example(owner="local", app_ref="echo@@latest")
@example(owner="local", app_ref="echo@")
def test_resolve_returns_what_the_text_names_or_not_found(
    world: World, owner: str, app_ref: str
) -> None:
    app, _, ref = app_ref.partition("@")
    wanted = world.revisions.get(ref or "latest") if (owner, app) == ("local", "echo") else None
    assert _resolve(world, owner, app_ref) == wanted


@checked
@given(ref=st.one_of(st.text(), st.sampled_from(["latest", "prod", "rev-1", "rev-2"])))
@example(ref="\x00")
@example(ref="latest\x00")
@example(ref="x" * 1000)
def test_revision_of_names_a_revision_of_the_app_or_none(world: World, ref: str) -> None:
    app = world.registry.get_app("local", "echo")
    assert app is not None
    found = world.registry.revision_of(app, ref)
    assert (found.id if found else None) == world.revisions.get(ref)
    assert _resolve(world, "local", f"echo@{ref}") == world.revisions.get(ref or "latest")
