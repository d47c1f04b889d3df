"""What an app's zygote preloads: declared (``App(preload=...)``) or found in its code at deploy."""

from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

import pytest

import klieg
from klieg import archive
from klieg.exceptions import KliegError
from klieg.types import AppSpec
from klieg_platform.deploy import _sources, default_preload

APPS = Path(__file__).resolve().parents[2] / "apps"


def sources(files: dict[str, str]) -> dict[str, bytes]:
    return {path: textwrap.dedent(text).encode() for path, text in files.items()}


def test_imports_at_any_depth_and_through_the_apps_own_modules() -> None:
    found = default_preload("app.py", sources({
        "app.py": """
            from __future__ import annotations
            import json, os.path
            from typing import TYPE_CHECKING
            import klieg
            from . import sibling
            import helpers
            from pkg.sub import thing
            if TYPE_CHECKING:
                import never_at_runtime
            else:
                import at_runtime
            class Model:
                def setup(self):
                    import torch.nn.functional as F
                    from safetensors.torch import load_file
            """,
        "helpers.py": "import numpy as np\nimport app  # a cycle is fine\n",
        "pkg/__init__.py": "",
        "pkg/sub.py": "from PIL import Image\n",
        "unused.py": "import sklearn\n",
        "broken.py": "def (:\n",
    }))  # fmt: skip
    assert found == (
        "PIL", "at_runtime", "numpy", "safetensors.torch", "torch.nn.functional",
    )  # fmt: skip


def test_a_file_that_does_not_parse_adds_nothing() -> None:
    assert default_preload("app.py", sources({"app.py": "import torch\ndef (:\n"})) == ()


def test_the_digits_app_preloads_torch_and_its_helpers() -> None:
    spec = AppSpec(name="digits", functions=(), entrypoint="app.py")
    code = archive.pack(APPS / "digits")
    with pytest.raises(Exception, match="declares no functions"):
        _sources(spec, code)
    with tarfile.open(fileobj=io.BytesIO(code)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                 if m.isfile() and m.name.endswith(".py")}  # fmt: skip
    found = default_preload("app.py", files)
    assert {"torch", "numpy", "safetensors.torch"} <= set(found)
    assert "model" not in found and "klieg" not in found


def test_a_declared_preload_is_recorded_sorted_and_checked() -> None:
    app = klieg.App("p", preload=["torch", "numpy", "torch"])

    @app.function()
    def f(x: int) -> int:
        return x

    assert app.spec().preload == ("numpy", "torch")
    assert klieg.App("q").spec().preload is None
    assert klieg.App("r", preload=[]).spec().preload == ()
    with pytest.raises(KliegError, match="invalid module name 'torch nn'"):
        klieg.App("s", preload=["torch nn"])
    with pytest.raises(ValueError, match="invalid module name"):
        AppSpec(name="t", preload=("1torch",))


def test_preload_code_is_recorded_and_checked() -> None:
    app = klieg.App("p", preload=["json"], preload_code=True)

    @app.function()
    def f(x: int) -> int:
        return x

    spec = app.spec()
    assert spec.preload_code is True and spec.preload == ("json",)
    assert klieg.App("q").spec().preload_code is False
    assert AppSpec.model_validate({"name": "old"}).preload_code is False  # stored before it
    with pytest.raises(KliegError, match="preload_code must be True or False, not 'yes'"):
        klieg.App("s", preload_code="yes")  # type: ignore[arg-type]
