"""Media through the platform: images an endpoint returns are stored and served by signed URL;
inputs arrive as URLs, data: URIs or uploads; the digits model makes the digits it was asked for."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sklearn.datasets import load_digits
from sklearn.svm import SVC

import klieg
from tests.e2e.platform import APPS, TEST_APPS, Platform

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def digits(platform: Platform) -> Platform:
    platform.deploy(APPS / "digits" / "app.py")
    return platform


def _png(url: str) -> PILImage.Image:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return PILImage.open(io.BytesIO(r.content))


def _generate(p: Platform, body: dict[str, Any]) -> dict[str, Any]:
    with p.http() as http:
        r = http.post("/local/digits", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())


def test_digits_returns_a_strip_and_one_image_per_digit(digits: Platform) -> None:
    out = _generate(digits, {"digits": "2026"})
    strip = _png(out["image"]["url"])
    assert strip.size == (out["image"]["width"], out["image"]["height"]) == (560, 128)
    assert len(out["digits"]) == 4
    for item in out["digits"]:
        assert _png(item["url"]).size == (64, 64)
        assert item["content_type"] == "image/png" and item["file_size"] > 0
    shot = os.environ.get("KLIEG_TEST_SAVE_DIGITS")
    if shot:
        strip.save(shot)


def test_same_seed_same_images_other_seed_other_images(digits: Platform) -> None:
    a = _generate(digits, {"digits": "7", "seed": 3})
    b = _generate(digits, {"digits": "7", "seed": 3})
    c = _generate(digits, {"digits": "7", "seed": 4})
    read = [httpx.get(o["digits"][0]["url"]).content for o in (a, b, c)]
    assert read[0] == read[1] and read[0] != read[2]


def test_generated_digits_are_the_requested_ones(digits: Platform) -> None:
    data = load_digits()
    classifier = SVC(gamma=0.001).fit(data.data, data.target)
    asked, seen = [], []
    for seed in (0, 1):
        out = _generate(digits, {"digits": "0123456789", "seed": seed})
        for wanted, item in zip("0123456789", out["digits"], strict=True):
            pixels = np.asarray(_png(item["url"]).convert("L"), dtype=float)[::8, ::8]
            asked.append(int(wanted))
            seen.append(int(classifier.predict((pixels / 255 * 16).reshape(1, -1))[0]))
    accuracy = np.mean(np.array(asked) == np.array(seen))
    assert accuracy >= 0.85, (asked, seen)


def test_invalid_input_names_the_field(digits: Platform) -> None:
    with digits.http() as http:
        r = http.post("/local/digits", json={"digits": "12a"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "digits"]


def test_file_urls_are_signed_and_expire(digits: Platform) -> None:
    url = _generate(digits, {"digits": "1"})["image"]["url"]
    assert httpx.get(url).status_code == 200
    tampered = url.replace("sig=", "sig=0")
    r = httpx.get(tampered)
    assert r.status_code == 401 and r.json()["error_type"] == "AuthenticationError"
    expired = url.split("?")[0] + "?expires=1&sig=" + url.split("sig=")[1]
    assert httpx.get(expired).status_code == 401


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (12, 7), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_inputs_by_data_uri_upload_and_url(platform: Platform, tmp_path: Path) -> None:
    platform.deploy(TEST_APPS / "mediaecho" / "app.py")
    png = _tiny_png()
    client = klieg.Client(platform.url, platform.key)
    uploaded = client.upload_file(png, "image/png", "tiny.png")
    assert uploaded.file_size == len(png) and httpx.get(uploaded.url).content == png
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    for url in (data_uri, uploaded.url):
        out = client.run("local/mediaecho", {"image": {"url": url}})
        assert (out["width"], out["height"]) == (12, 7)
        grey = _png(out["grey"]["url"])
        assert grey.mode == "L" and grey.size == (12, 7)
        assert httpx.get(out["note"]["url"]).content == b"12x7"
    handle = client.submit("local/mediaecho", {"image": {"url": out["grey"]["url"]}})
    again = client.wait(handle, timeout=60)
    assert (again["width"], again["height"]) == (12, 7)
    logs = client.status(handle.app_id, handle.request_id, with_logs=True)["logs"] or []
    assert not [line for line in logs if "HTTP Request" in line["message"]]  # the input fetch
    with platform.http(key="") as anon:
        r = anon.post("/files/upload", content=png, headers={"content-type": "image/png"})
        assert r.status_code == 401


WEIGHTS_CHECK = """
import sys, torch
from safetensors.torch import load_file
from klieg import weights
path = sys.argv[1]
mapped, read = weights.load(path), load_file(path)
assert mapped.keys() == read.keys(), (mapped.keys(), read.keys())
for name, tensor in read.items():
    assert mapped[name].dtype == tensor.dtype and torch.equal(mapped[name], tensor), name
assert path in open("/proc/self/maps").read()
net = torch.nn.Linear(2, 2)
state = {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}
net.load_state_dict(state, assign=True)
assert net.weight.data_ptr() == state["weight"].data_ptr()
print(len(mapped))
"""


def test_weights_mapped_in_the_digits_env_equal_what_safetensors_reads(digits: Platform) -> None:
    """``klieg.weights.load`` with torch (in the env the digits deploy built): the same tensors
    as ``safetensors.torch.load_file``, backed by a mapping of the file."""
    import subprocess

    pythons = [p / "bin" / "python" for p in (digits.home / "envs").iterdir()]
    python = next(p for p in pythons if p.exists() and (p.parent / "torchrun").exists())
    path = str(APPS / "digits" / "weights.safetensors")
    done = subprocess.run([str(python), "-c", WEIGHTS_CHECK, path], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10
