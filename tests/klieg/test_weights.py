"""klieg.weights: safetensors files mapped copy-on-write (numpy here; torch in the digits env,
``tests/e2e/test_media.py``)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from klieg import weights
from klieg.exceptions import KliegError


def write(path: Path, tensors: dict[str, np.ndarray], header_extra: dict | None = None) -> None:
    header: dict = {"__metadata__": {"format": "np"}, **(header_extra or {})}
    blobs, at = [], 0
    codes = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("uint8"): "U8"}
    for name, array in tensors.items():
        data = array.tobytes()
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [at, at + len(data)]}  # fmt: skip
        blobs.append(data)
        at += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_tensors_are_the_files_pages_and_writes_stay_private(tmp_path: Path) -> None:
    file = tmp_path / "w.safetensors"
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    write(file, {"w": w, "step": np.array(7, dtype=np.int64), "none": np.zeros(0, np.uint8)})
    loaded = weights.load(file, framework="np")
    assert set(loaded) == {"w", "step", "none"}
    assert np.array_equal(loaded["w"], w) and loaded["step"].shape == () and loaded["step"] == 7
    assert loaded["none"].shape == (0,)
    maps = Path("/proc/self/maps").read_text()
    assert str(file) in maps  # backed by a mapping of the file, not read into the heap
    loaded["w"][0, 0] = 100.0  # copy-on-write: this runner's page only
    assert weights.load(file, framework="np")["w"][0, 0] == 0.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is not a safetensors file"),
        (b"\x01\x00", "too short"),
        (struct.pack("<Q", 10**12) + b"{}", "header size"),
        (struct.pack("<Q", 2) + b"[]", "not an object"),
        (struct.pack("<Q", 3) + b"{x}", "is not a safetensors file"),
    ],
)
def test_a_file_that_is_not_safetensors_is_one_typed_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    file = tmp_path / "bad.safetensors"
    file.write_bytes(content)
    with pytest.raises(KliegError, match=problem):
        weights.load(file)


def test_bad_entries_and_frameworks_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "w.safetensors"
    bad = {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}
    write(file, {"w": np.ones(4, np.float32)}, {"x": bad})
    with pytest.raises(KliegError, match="tensor 'x' lies outside the file"):
        weights.load(file, framework="np")
    write(file, {}, {"y": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}})
    with pytest.raises(KliegError, match="tensor 'y' has a bad header entry"):
        weights.load(file, framework="np")
    with pytest.raises(KliegError, match="framework must be"):
        weights.load(file, framework="jax")
