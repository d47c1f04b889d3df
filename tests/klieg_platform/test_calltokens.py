"""Call tokens: a token names its tenant until it expires, and only the signing key makes one."""

from __future__ import annotations

import time

import pytest

from klieg._runtime import context
from klieg.exceptions import KliegError
from klieg_platform import calltokens
from klieg_platform.storage.signing import signature

KEY = "s3cret-signing-key"


def test_a_token_verifies_to_its_tenant() -> None:
    token = calltokens.issue(KEY, "tenant123", 60)
    assert token.startswith("kc1.tenant123.")
    assert calltokens.is_call_token(token)
    assert calltokens.verify(KEY, token) == "tenant123"
    assert calltokens.verify(KEY.encode(), token) == "tenant123"  # bytes and str keys agree


def test_a_tampered_token_is_rejected() -> None:
    prefix, tenant, expires, sig = calltokens.issue(KEY, "tenant123", 60).split(".")
    assert calltokens.verify(KEY, f"{prefix}.other.{expires}.{sig}") is None
    assert calltokens.verify(KEY, f"{prefix}.{tenant}.{int(expires) + 3600}.{sig}") is None
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert calltokens.verify(KEY, f"{prefix}.{tenant}.{expires}.{flipped}") is None
    assert calltokens.verify(KEY, f"kc2.{tenant}.{expires}.{sig}") is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "kc1",
        "kc1...",
        "kc1.t.x.y",
        "kc1.t.1.2.3",
        "kc1.t.\u00b2.ab",
        "kc1.t.9.\u00e9",
        "Key a:b",
    ],
)
def test_malformed_tokens_are_rejected_without_raising(token: str) -> None:
    assert calltokens.verify(KEY, token) is None


def test_an_expired_token_is_rejected() -> None:
    assert calltokens.verify(KEY, calltokens.issue(KEY, "t1", -1)) is None
    token = calltokens.issue(KEY, "t1", 1)
    assert calltokens.verify(KEY, token) == "t1"
    time.sleep(2.1)
    assert calltokens.verify(KEY, token) is None


def test_another_key_or_no_key_does_not_verify() -> None:
    token = calltokens.issue(KEY, "t1", 60)
    assert calltokens.verify("another-key", token) is None
    assert calltokens.verify("", token) is None
    with pytest.raises(ValueError, match="signing key"):
        calltokens.issue("", "t1", 60)
    with pytest.raises(ValueError, match="tenant id"):
        calltokens.issue(KEY, "a.b", 60)


def test_a_file_url_signature_is_not_a_call_token() -> None:
    expires = int(time.time()) + 60
    sig = signature(KEY, "kc1\nt1", expires)
    assert calltokens.verify(KEY, f"kc1.t1.{expires}.{sig}") is None


def test_runtime_context_picks_one_token_per_tenant() -> None:
    early, late = calltokens.issue(KEY, "t1", 10), calltokens.issue(KEY, "t1", 100)
    try:
        context.set_token(early)
        assert context.current_token() == early
        context.set_batch_tokens([early, late, early])
        assert context.current_token() == late
        context.set_batch_tokens([early, calltokens.issue(KEY, "t2", 10)])
        with pytest.raises(KliegError, match="different tenants"):
            context.current_token()
        context.set_batch_tokens([])
        assert context.current_token() is None
    finally:
        context.clear()
    assert context.current_token() is None


def test_issued_tokens_are_reused_only_while_they_cover_the_time_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [time.time()]
    monkeypatch.setattr(calltokens.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(calltokens.time, "time", lambda: clock[0])
    issued = calltokens.Issued(KEY)
    first = issued.token("tenant123", 90)
    assert issued.token("tenant123", 90) == first
    assert issued.token("tenant123", 120) != first, "another duration, another token"
    assert issued.token("other", 90) != first
    assert calltokens.verify(KEY, first) == "tenant123"
    assert int(first.split(".")[2]) >= clock[0] + 90 + calltokens.Issued.REUSE_S
    clock[0] += calltokens.Issued.REUSE_S - 0.5
    assert issued.token("tenant123", 90) == first, "still good for 90 s and more"
    clock[0] += 1.0
    again = issued.token("tenant123", 90)
    assert again != first and int(again.split(".")[2]) >= clock[0] + 90
