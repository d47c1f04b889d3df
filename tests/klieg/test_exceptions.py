"""Wire error types map back to the typed classes with their HTTP status."""

from __future__ import annotations

import pytest

from klieg import exceptions as exc

pytestmark = pytest.mark.timeout(30)

TABLE: list[tuple[type[exc.KliegError], int]] = [
    (exc.AuthenticationError, 401),
    (exc.PermissionDeniedError, 403),
    (exc.NotFoundError, 404),
    (exc.InvalidRequestError, 400),
    (exc.PayloadTooLargeError, 413),
    (exc.ValidationError, 422),
    (exc.QueueFullError, 429),
    (exc.AppError, 500),
    (exc.SetupError, 503),
    (exc.RunnerCrashedError, 500),
    (exc.WorkerLostError, 500),
    (exc.RequestTimeoutError, 504),
    (exc.RequestCancelledError, 499),
    (exc.DeployError, 400),
    (exc.UnavailableError, 503),
]


@pytest.mark.parametrize(("cls", "status"), TABLE)
def test_error_class_maps_names_to_classes(cls: type[exc.KliegError], status: int) -> None:
    assert exc.error_class(cls.__name__) is cls
    assert cls.status_code == status
    assert issubclass(cls, exc.KliegError)


@pytest.mark.parametrize("name", [None, "", "NoSuchError", "ValueError", "notfounderror"])
def test_unknown_names_map_to_the_base(name: str | None) -> None:
    assert exc.error_class(name) is exc.KliegError


def test_base_maps_to_itself() -> None:
    assert exc.error_class("KliegError") is exc.KliegError


@pytest.mark.parametrize(("cls", "status"), TABLE)
def test_from_wire_rebuilds_typed_errors(cls: type[exc.KliegError], status: int) -> None:
    body = {"detail": f"{cls.__name__} happened", "error_type": cls.__name__}
    err = exc.from_wire(body, status)
    assert type(err) is cls
    assert err.status_code == status
    assert err.detail == f"{cls.__name__} happened"
    assert err.error_type == cls.__name__
    assert err.to_dict() == body


def test_from_wire_keeps_structured_detail_and_given_status() -> None:
    detail = [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]
    err = exc.from_wire({"detail": detail, "error_type": "ValidationError"}, 400)
    assert isinstance(err, exc.ValidationError)
    assert err.detail == detail
    assert err.status_code == 400
    assert exc.ValidationError.status_code == 422


def test_from_wire_unknown_or_malformed_bodies() -> None:
    err = exc.from_wire({"detail": "boom", "error_type": "Mystery"}, 502)
    assert type(err) is exc.KliegError and err.status_code == 502 and err.detail == "boom"
    assert err.error_type == "Mystery"
    assert err.to_dict() == {"detail": "boom", "error_type": "Mystery"}
    err = exc.from_wire({"detail": "no type"}, 500)
    assert type(err) is exc.KliegError and err.detail == "no type"
    err = exc.from_wire("Bad Gateway", 502)
    assert type(err) is exc.KliegError
    assert err.detail == "Bad Gateway" and err.status_code == 502


def test_from_wire_fallback_class_for_unknown_types() -> None:
    body = {"detail": "no such version", "error_type": "ImaginaryServerError"}
    err = exc.from_wire(body, 400, exc.DeployError)
    assert type(err) is exc.DeployError
    assert err.error_type == "ImaginaryServerError" and err.status_code == 400
    assert err.to_dict() == body
    env = exc.from_wire({"detail": "x", "error_type": "EnvResolutionError"}, 400, exc.DeployError)
    assert isinstance(env, exc.DeployError) and env.error_type == "EnvResolutionError"
    known = exc.from_wire({"detail": "x", "error_type": "NotFoundError"}, 404, exc.DeployError)
    assert type(known) is exc.NotFoundError
    assert type(exc.from_wire("plain text", 400, exc.DeployError)) is exc.DeployError


def test_errors_are_catchable_as_the_base_and_carry_a_message() -> None:
    with pytest.raises(exc.KliegError) as info:
        raise exc.from_wire({"detail": "missing", "error_type": "NotFoundError"}, 404)
    assert isinstance(info.value, exc.NotFoundError)
    assert str(info.value) == "missing"


def test_default_detail_is_the_docstring() -> None:
    err = exc.NotFoundError()
    assert err.detail == exc.NotFoundError.__doc__
    assert err.status_code == 404


def test_every_public_exception_is_exported_from_klieg() -> None:
    import inspect

    import klieg
    from klieg import exceptions

    public = {name for name, obj in vars(exceptions).items()
              if inspect.isclass(obj) and issubclass(obj, exceptions.KliegError)
              and obj.__module__ == exceptions.__name__ and not name.startswith("_")}  # fmt: skip
    assert public and public <= set(klieg.__all__)
    assert all(getattr(klieg, name) is getattr(exceptions, name) for name in public)
