"""Tenant names that would clash with the gateway's own routes are refused."""

from __future__ import annotations

import pytest

from klieg.exceptions import InvalidRequestError, ValidationError
from klieg_platform.gateway.admin import RESERVED
from klieg_platform.gateway.app import ROUTES
from klieg_platform.registry import TENANT_NAME
from tests.klieg_platform.gateway.conftest import Gateway

pytestmark = pytest.mark.timeout(60)


def test_every_fixed_first_segment_of_a_route_is_reserved() -> None:
    fixed = {r.path.split("/")[1] for r in ROUTES if not r.path.startswith("/{")}
    assert {"queue", "workflows", "files", "apps"} <= fixed
    assert fixed <= RESERVED, f"routes under a tenant-like name: {sorted(fixed - RESERVED)}"


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_a_reserved_name_cannot_name_a_tenant(gateway: Gateway, name: str) -> None:
    if TENANT_NAME.fullmatch(name):
        with pytest.raises(InvalidRequestError, match=f"'{name}' is reserved") as caught:
            gateway.admin.create_key(name)
        assert caught.value.status_code == 400
    else:  # no tenant name at all (openapi.json): the body's field is refused first
        with pytest.raises(ValidationError, match="tenant") as refused:
            gateway.admin.create_key(name)
        assert refused.value.status_code == 422
    assert gateway.registry.get_tenant(name) is None


def test_a_name_next_to_a_reserved_one_is_a_tenant(gateway: Gateway) -> None:
    created = gateway.admin.create_key("queues")
    assert created["tenant"] == "queues" and gateway.registry.get_tenant("queues") is not None
