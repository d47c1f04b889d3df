"""Scale overrides resolved per setting (a function's over its app's over the spec), checked
before they are stored."""

from __future__ import annotations

import pytest

from klieg.exceptions import InvalidRequestError
from klieg.types import AppSpec, FunctionSpec
from klieg_platform.scaling import (
    ScaleOverride,
    check_effective,
    effective,
    effective_app,
    effective_doc,
)


def fn(name: str, **scaling: float | int) -> FunctionSpec:
    return FunctionSpec(name=name, kind="function", module="app", qualname=name, **scaling)


SPEC = AppSpec(name="a", functions=(fn("gen", max_concurrency=4), fn("thumb", keep_alive=5)))


def test_a_function_override_wins_over_the_app_one_setting_by_setting() -> None:
    overrides = [
        ScaleOverride("", min_concurrency=1, keep_alive=30),
        ScaleOverride("gen", min_concurrency=3, concurrency_buffer=2),
    ]
    gen, thumb = effective_app(SPEC, overrides).functions
    assert (gen.min_concurrency, gen.keep_alive, gen.concurrency_buffer) == (3, 30, 2)
    assert (thumb.min_concurrency, thumb.keep_alive, thumb.concurrency_buffer) == (1, 30, 0)
    assert gen.max_concurrency == 4  # not overridden: the spec's
    assert effective(SPEC.functions[1], []) is SPEC.functions[1]


def test_a_stored_spec_document_resolves_the_same_and_is_left_alone() -> None:
    overrides = [ScaleOverride("", keep_alive=1), ScaleOverride("thumb", max_concurrency=2)]
    doc = SPEC.model_dump(mode="json")
    resolved = effective_doc(doc, overrides)
    assert AppSpec.model_validate(resolved) == effective_app(SPEC, overrides)
    assert doc == SPEC.model_dump(mode="json")


def test_min_above_max_after_resolution_is_refused_naming_the_function() -> None:
    check_effective(SPEC, [ScaleOverride("gen", min_concurrency=4)])
    with pytest.raises(InvalidRequestError, match=r"'thumb'.*min_concurrency 2"):
        check_effective(SPEC, [ScaleOverride("", min_concurrency=2)])
