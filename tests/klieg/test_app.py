"""App decorators record without wrapping; ``App.spec()`` describes hardware, scaling and routes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import klieg
from klieg.exceptions import KliegError
from klieg.types import AppSpec, FunctionSpec

pytestmark = pytest.mark.timeout(30)


class In(BaseModel):
    text: str
    n: int = 1


class Out(BaseModel):
    text: str


def shout(req: In) -> Out:
    return Out(text=req.text.upper() * req.n)


def make_app() -> klieg.App:
    app = klieg.App("media-app_1", requirements=["six==1.16.0"], python="3.12")

    @app.function(keep_alive=30, min_concurrency=1, max_concurrency=3, request_timeout=12)
    @klieg.endpoint("thumb/")
    def thumbnail(req: In) -> Out:
        return Out(text=req.text)

    @app.function()
    def plain(req: In) -> dict[str, Any]:
        return {"n": req.n}

    @app.cls(gpu="h100", keep_alive=300, max_concurrency=4, startup_timeout=90)
    class Model:
        def setup(self) -> None:
            self.prefix = ">> "

        @klieg.endpoint("/")
        def generate(self, req: In) -> Out:
            return Out(text=self.prefix + req.text)

        @klieg.endpoint("//say//")
        def say(self, req: In) -> Out:
            return Out(text=req.text)

        def helper(self) -> str:
            return "not an endpoint"

    return app


def by_name(spec: AppSpec, name: str) -> FunctionSpec:
    fn = spec.function(name)
    assert fn is not None, f"no function {name!r} in {[f.name for f in spec.functions]}"
    return fn


def test_decorators_return_the_same_callable_objects() -> None:
    app = klieg.App("same")

    def fn(req: In) -> Out:
        return Out(text=req.text + "!")

    class Klass:
        @klieg.endpoint("/")
        def run(self, req: In) -> Out:
            return Out(text=req.text)

    marked = klieg.endpoint("/x")(fn)
    assert marked is fn
    assert app.function()(fn) is fn
    assert app.cls()(Klass) is Klass
    assert fn(In(text="hi")) == Out(text="hi!")
    assert Klass().run(In(text="yo")) == Out(text="yo")


def test_spec_app_level_fields() -> None:
    spec = make_app().spec(entrypoint="src/app.py")
    assert spec.name == "media-app_1"
    assert spec.python == "3.12"
    assert spec.requirements == ("six==1.16.0",)
    assert spec.entrypoint == "src/app.py"
    assert [f.name for f in spec.functions] == ["thumbnail", "plain", "Model"]


def test_spec_pool_and_gpus() -> None:
    spec = make_app().spec()
    cpu = by_name(spec, "thumbnail")
    gpu = by_name(spec, "Model")
    assert cpu.gpu is None and cpu.num_gpus == 0 and cpu.pool == "CPU"
    assert gpu.gpu == "h100" and gpu.num_gpus == 1 and gpu.pool == "GPU-H100"
    app = klieg.App("multi")

    @app.function(gpu="A100", num_gpus=4)
    def big(req: In) -> Out:
        return Out(text=req.text)

    fn = app.spec().functions[0]
    assert fn.num_gpus == 4 and fn.pool == "GPU-A100"


def test_spec_scaling_and_timeouts() -> None:
    spec = make_app().spec()
    thumb = by_name(spec, "thumbnail")
    assert (thumb.keep_alive, thumb.min_concurrency, thumb.max_concurrency) == (30, 1, 3)
    assert thumb.request_timeout == 12
    assert thumb.startup_timeout == 300.0
    model = by_name(spec, "Model")
    assert (model.keep_alive, model.min_concurrency, model.max_concurrency) == (300, 0, 4)
    assert model.startup_timeout == 90
    assert model.request_timeout == 600.0
    plain = by_name(spec, "plain")
    assert (plain.keep_alive, plain.min_concurrency, plain.max_concurrency) == (60.0, 0, 1)


def test_spec_kinds_module_and_qualname() -> None:
    spec = make_app().spec()
    thumb = by_name(spec, "thumbnail")
    model = by_name(spec, "Model")
    assert thumb.kind == "function" and model.kind == "cls"
    assert thumb.module == __name__ == model.module
    assert thumb.qualname == "make_app.<locals>.thumbnail"
    assert model.qualname == "make_app.<locals>.Model"


def test_endpoint_paths_are_normalised_and_defaulted() -> None:
    spec = make_app().spec()
    assert [(e.path, e.method) for e in by_name(spec, "thumbnail").endpoints] == [
        ("/thumb", "thumbnail")
    ]
    assert [(e.path, e.method) for e in by_name(spec, "plain").endpoints] == [("/plain", "plain")]
    model_eps = {e.method: e.path for e in by_name(spec, "Model").endpoints}
    assert model_eps == {"generate": "/", "say": "/say"}


def test_function_name_option_sets_the_default_path() -> None:
    app = klieg.App("named")

    @app.function(name="renamed")
    def original(req: In) -> Out:
        return Out(text=req.text)

    fn = app.spec().functions[0]
    assert fn.name == "renamed"
    assert fn.endpoints[0].path == "/renamed"
    assert fn.endpoints[0].method == "original"


def test_endpoint_json_schemas() -> None:
    spec = make_app().spec()
    thumb = by_name(spec, "thumbnail").endpoints[0]
    assert thumb.input_schema == In.model_json_schema()
    assert thumb.output_schema == Out.model_json_schema()
    assert thumb.input_schema is not None and thumb.input_schema["required"] == ["text"]
    plain = by_name(spec, "plain").endpoints[0]
    assert plain.input_schema == In.model_json_schema()
    assert plain.output_schema is None
    for ep in by_name(spec, "Model").endpoints:
        assert ep.input_schema == In.model_json_schema()
        assert ep.output_schema == Out.model_json_schema()


def test_endpoint_without_input_model_has_no_input_schema() -> None:
    app = klieg.App("noin")

    @app.function()
    def ping() -> Out:
        return Out(text="pong")

    ep = app.spec().functions[0].endpoints[0]
    assert ep.input_schema is None
    assert ep.output_schema == Out.model_json_schema()


def test_spec_round_trips_through_json() -> None:
    spec = make_app().spec()
    assert AppSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    "options",
    [
        {"min_concurrency": 3, "max_concurrency": 2},
        {"max_concurrency": 0},
        {"min_concurrency": -1},
        {"num_gpus": 2},
        {"gpu": "H100", "num_gpus": -1},
        {"keep_alive": -1},
        {"request_timeout": 0},
        {"startup_timeout": -5},
    ],
)
def test_bad_options_raise(options: dict[str, Any]) -> None:
    app = klieg.App("bad")
    with pytest.raises(KliegError):
        app.function(**options)
    with pytest.raises(KliegError):
        app.cls(**options)


def test_duplicate_function_names_raise() -> None:
    app = klieg.App("dup")
    app.function()(shout)
    with pytest.raises(KliegError, match="shout"):
        app.function()(shout)

    def other(req: In) -> Out:
        return Out(text=req.text)

    with pytest.raises(KliegError):
        app.function(name="shout")(other)


def test_two_functions_on_the_same_path_raise() -> None:
    app = klieg.App("samepath")

    @app.function()
    @klieg.endpoint("/go")
    def first(req: In) -> Out:
        return Out(text=req.text)

    @app.function()
    @klieg.endpoint("go/")
    def second(req: In) -> Out:
        return Out(text=req.text)

    with pytest.raises(KliegError, match="/go"):
        app.spec()


def test_default_path_colliding_with_an_endpoint_raises() -> None:
    app = klieg.App("collide")
    app.function()(shout)

    @app.function()
    @klieg.endpoint("/shout")
    def loud(req: In) -> Out:
        return Out(text=req.text)

    with pytest.raises(KliegError):
        app.spec()


def test_class_without_endpoints_raises() -> None:
    app = klieg.App("noeps")

    @app.cls()
    class Empty:
        def run(self, req: In) -> Out:
            return Out(text=req.text)

    with pytest.raises(KliegError, match="Empty"):
        app.spec()


def test_wrong_decorator_for_kind_raises() -> None:
    app = klieg.App("kinds")

    class Klass:
        pass

    with pytest.raises(KliegError):
        app.function()(Klass)
    with pytest.raises(KliegError):
        app.cls()(shout)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "Echo", "my app", "-lead", "a/b", "x" * 64, "ü"])
def test_invalid_app_names_raise(name: str) -> None:
    with pytest.raises(KliegError):
        klieg.App(name)


@pytest.mark.parametrize("name", ["a", "echo", "my-app_2", "0lead", "x" * 63])
def test_valid_app_names(name: str) -> None:
    assert klieg.App(name).name == name


def test_route_ignores_slashes_and_misses_unknown_paths() -> None:
    spec = make_app().spec()
    for path in ("say", "/say", "say/", "//say//"):
        found = spec.route(path)
        assert found is not None
        fn, ep = found
        assert (fn.name, ep.method) == ("Model", "say")
    for path in ("", "/", "//"):
        found = spec.route(path)
        assert found is not None and found[1].method == "generate"
    thumb = spec.route("thumb")
    assert thumb is not None and thumb[0].name == "thumbnail"
    plain = spec.route("/plain/")
    assert plain is not None and plain[0].name == "plain"
    assert spec.route("/nope") is None
    assert spec.route("/say/more") is None
    assert spec.route("/Say") is None


def test_spec_function_lookup() -> None:
    spec = make_app().spec()
    assert spec.function("plain") is not None
    assert spec.function("missing") is None


def test_batched_endpoints_record_their_batching_and_item_schemas() -> None:
    app = klieg.App("batched")

    @app.cls(max_batch_size=8, batch_wait_ms=15)
    class Model:
        @klieg.endpoint("/")
        def many(self, reqs: list[In]) -> list[Out]:
            return [Out(text=r.text) for r in reqs]

        @klieg.endpoint("/other", max_batch_size=2, batch_wait_ms=0)
        def other(self, reqs: list[In]) -> list[Out]:
            return [Out(text=r.text) for r in reqs]

        @klieg.endpoint("/one")
        def one(self, req: In) -> Out:
            return Out(text=req.text)

    eps = {ep.path: ep for ep in by_name(app.spec(), "Model").endpoints}
    assert (eps["/"].batched, eps["/"].max_batch_size, eps["/"].batch_wait_ms) == (True, 8, 15)
    assert (eps["/other"].max_batch_size, eps["/other"].batch_wait_ms) == (2, 0)
    assert (eps["/one"].batched, eps["/one"].max_batch_size) == (False, 1)
    assert eps["/"].input_schema == In.model_json_schema()
    assert eps["/"].output_schema == Out.model_json_schema()


def test_batching_needs_a_list_signature() -> None:
    app = klieg.App("bad")

    @app.function(max_batch_size=4)
    def single(req: In) -> Out:
        return Out(text=req.text)

    with pytest.raises(KliegError, match="no endpoint of it takes list"):
        app.spec()

    other = klieg.App("bad2")

    @other.function()
    @klieg.endpoint("/", max_batch_size=4)
    def single2(req: In) -> Out:
        return Out(text=req.text)

    with pytest.raises(KliegError, match="must take list"):
        other.spec()
    with pytest.raises(KliegError):
        klieg.endpoint("/", max_batch_size=0)


def test_a_list_endpoint_without_batching_takes_a_json_list() -> None:
    app = klieg.App("lists")

    @app.function()
    def total(values: list[int]) -> int:
        return sum(values)

    (ep,) = by_name(app.spec(), "total").endpoints
    assert not ep.batched and ep.max_batch_size == 1
