"""Weights that runners share: a safetensors file memory-mapped, not read into private memory.

Every runner of an app that loads its weights with :func:`load` maps the same file, so the
weights' pages are the page cache's, held once per machine however many runners (forked from a
zygote or not) use them; a page is copied for a runner only if that runner writes to it (the
mapping is copy-on-write). Give a module the tensors themselves, not copies::

    from klieg import weights

    class Model:
        def setup(self) -> None:
            self.net = Net()
            self.net.load_state_dict(weights.load("weights.safetensors"), assign=True)

``load_state_dict(..., assign=True)`` (torch >= 2.1) makes the mapped tensors the module's
parameters; without ``assign`` torch copies them into its own. A conversion (``.float()``,
``.to("cuda")``) copies too: store the weights in the dtype they run in on that device. Without
torch, :func:`load` returns numpy arrays.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

from klieg.exceptions import KliegError

DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
"""safetensors dtype codes -> torch/numpy dtype names (numpy has no bfloat16)."""
MAX_HEADER = 100 * 1024 * 1024


def load(path: str | Path, *, framework: str = "auto") -> dict[str, Any]:
    """The tensors of the safetensors file at ``path``, by name, backed by a copy-on-write
    mapping of it. ``framework``: ``"pt"`` (torch tensors), ``"np"`` (numpy arrays) or
    ``"auto"`` (torch when it is installed). A file that is not safetensors is a
    ``KliegError`` naming it."""
    file = Path(path)
    with file.open("rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except ValueError as exc:  # an empty file
            raise KliegError(f"{file} is not a safetensors file: {exc}") from exc
    header, base = _header(file, mapped)
    make = _maker(framework)
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise KliegError(f"{file}: tensor {name!r} has a bad header entry: {exc}") from exc
        if not 0 <= begin <= end <= len(mapped) - base:
            raise KliegError(f"{file}: tensor {name!r} lies outside the file")
        out[name] = make(memoryview(mapped)[base + begin : base + end], dtype, shape)
    return out


def _header(file: Path, mapped: mmap.mmap) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and where the data starts."""
    if len(mapped) < 8:
        raise KliegError(f"{file} is not a safetensors file: too short")
    (size,) = struct.unpack_from("<Q", mapped, 0)
    if size > min(MAX_HEADER, len(mapped) - 8):
        raise KliegError(f"{file} is not a safetensors file: header size {size}")
    try:
        header = json.loads(mapped[8 : 8 + size])
    except ValueError as exc:
        raise KliegError(f"{file} is not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise KliegError(f"{file} is not a safetensors file: its header is not an object")
    return header, 8 + size


def _maker(framework: str) -> Any:
    if framework not in ("auto", "pt", "np"):
        raise KliegError(f"framework must be 'auto', 'pt' or 'np', not {framework!r}")
    if framework in ("auto", "pt"):
        try:
            import torch
        except ImportError:
            if framework == "pt":
                raise KliegError("framework='pt' needs torch, which is not installed") from None
        else:

            def tensor(view: memoryview, dtype: str, shape: list[int]) -> Any:
                kind = getattr(torch, dtype)
                if len(view) == 0:
                    return torch.empty(shape, dtype=kind)
                return torch.frombuffer(view, dtype=kind).reshape(shape)

            return tensor
    import numpy

    def array(view: memoryview, dtype: str, shape: list[int]) -> Any:
        if dtype == "bfloat16":
            raise KliegError("numpy has no bfloat16: load this file with torch")
        return numpy.frombuffer(view, dtype=dtype).reshape(shape)

    return array
