"""The ocr app on a real platform, over HTTP: text rendered with Pillow is read back in reading
order with boxes inside the image, the annotated PNG is fetched by its signed URL and decoded,
undecodable input gets a 422 naming the field, and a blank image has no text."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage
from PIL import ImageChops, ImageDraw, ImageFont

from tests.e2e.platform import APPS, Platform

pytestmark = pytest.mark.timeout(600)  # the first deploy downloads ~120 MB of wheels


@pytest.fixture(scope="module")
def ocr(platform: Platform) -> Platform:
    platform.deploy(APPS / "ocr" / "app.py")
    return platform


def _rendered(size: tuple[int, int], texts: list[tuple[tuple[int, int], str]]) -> PILImage.Image:
    image = PILImage.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=48)
    for xy, text in texts:
        draw.text(xy, text, fill=(0, 0, 0), font=font)
    return image


def _data_uri(image: PILImage.Image) -> dict[str, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}


def _read(p: Platform, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    with p.http() as http:
        r = http.post("/local/ocr", json=body)
    assert r.status_code == status, r.text
    return dict(r.json())


def _squashed(text: str) -> str:
    return re.sub(r"\s+", "", text).upper()


def _annotated(out: dict[str, Any]) -> PILImage.Image:
    media = out["annotated"]
    r = httpx.get(media["url"], timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"] == media["content_type"] == "image/png"
    image = PILImage.open(io.BytesIO(r.content))
    assert image.format == "PNG"
    assert image.size == (media["width"], media["height"])
    return image


def _top(line: dict[str, Any]) -> float:
    return min(y for _, y in line["box"])


def _left(line: dict[str, Any]) -> float:
    return min(x for x, _ in line["box"])


def test_two_lines_are_read_top_to_bottom_with_boxes_inside(ocr: Platform) -> None:
    image = _rendered((560, 200), [((24, 24), "KLIEG 2026"), ((24, 112), "HELLO WORLD")])
    out = _read(ocr, {"image": _data_uri(image), "min_confidence": 0.5})
    assert [_squashed(line["text"]) for line in out["lines"]] == ["KLIEG2026", "HELLOWORLD"]
    assert _squashed(out["text"]) == "KLIEG2026HELLOWORLD"
    assert out["text"].count("\n") == 1
    for line in out["lines"]:
        assert 0.5 <= line["confidence"] <= 1.0
        assert len(line["box"]) == 4
        assert all(0 <= x <= 560 and 0 <= y <= 200 for x, y in line["box"]), line
    first, second = out["lines"]
    assert max(y for _, y in first["box"]) <= _top(second)
    assert _top(first) < 24 + 48 and _top(second) > 100  # where the text was drawn
    annotated = _annotated(out)
    assert annotated.size == image.size
    _assert_outlines_only_around(annotated, image, [line["box"] for line in out["lines"]])


def _assert_outlines_only_around(
    annotated: PILImage.Image, source: PILImage.Image, boxes: list[list[list[float]]]
) -> None:
    """``annotated`` is ``source`` with coloured pixels drawn along every box and nowhere else."""
    changed = ImageChops.difference(annotated.convert("RGB"), source.convert("RGB"))
    mask = changed.convert("L").point(lambda v: 255 if v else 0)
    drawn = {(x, y) for y in range(mask.height) for x in range(mask.width) if mask.getpixel((x, y))}
    rects = [
        (min(x for x, _ in b) - 3, min(y for _, y in b) - 3, max(x for x, _ in b) + 3,
         max(y for _, y in b) + 3)
        for b in boxes
    ]  # fmt: skip
    for x0, y0, x1, y1 in rects:
        assert any(x0 <= x <= x1 and y0 <= y <= y1 for x, y in drawn)
    assert all(any(r[0] <= x <= r[2] and r[1] <= y <= r[3] for r in rects) for x, y in drawn)


def test_lines_of_one_row_are_read_left_to_right(ocr: Platform) -> None:
    image = _rendered((760, 220), [((430, 30), "RIGHT"), ((24, 34), "LEFT"), ((24, 130), "BOTTOM")])
    out = _read(ocr, {"image": _data_uri(image)})
    assert [_squashed(line["text"]) for line in out["lines"]] == ["LEFT", "RIGHT", "BOTTOM"]
    left, right, _ = out["lines"]
    assert _left(left) < _left(right)


def test_min_confidence_drops_the_less_certain_lines(ocr: Platform) -> None:
    image = _data_uri(_rendered((560, 200), [((24, 24), "KLIEG 2026"), ((24, 112), "HELLO WORLD")]))
    every = _read(ocr, {"image": image, "min_confidence": 0.0})["lines"]
    confidences = sorted(line["confidence"] for line in every)
    assert len(every) == 2 and confidences[0] < 1.0, every
    thresholds = [confidences[0], sum(confidences) / 2, confidences[1], 1.0]
    for threshold in thresholds:
        kept = _read(ocr, {"image": image, "min_confidence": threshold})["lines"]
        assert kept == [line for line in every if line["confidence"] >= threshold], threshold
    assert _read(ocr, {"image": image, "min_confidence": 1.0})["lines"] != every
    too_high = _read(ocr, {"image": image, "min_confidence": 1.5}, 422)
    assert too_high["detail"][0]["loc"] == ["body", "min_confidence"]


def test_a_blank_image_has_no_text(ocr: Platform) -> None:
    blank = PILImage.new("RGB", (320, 160), (255, 255, 255))
    out = _read(ocr, {"image": _data_uri(blank)})
    assert out["text"] == "" and out["lines"] == []
    assert _annotated(out).size == (320, 160)


def test_transparent_png_text_is_read_on_white(ocr: Platform) -> None:
    image = PILImage.new("RGBA", (400, 100), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.text((20, 20), "OPEN 24H", fill=(0, 0, 0, 255), font=ImageFont.load_default(size=48))
    out = _read(ocr, {"image": _data_uri(image)})
    assert _squashed(out["text"]) == "OPEN24H"


def test_undecodable_image_is_422_naming_the_field(ocr: Platform) -> None:
    junk = {"url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}
    r = _read(ocr, {"image": junk}, 422)
    assert r["error_type"] == "ValidationError"
    (error,) = r["detail"]
    assert error["loc"] == ["body", "image"] and error["type"] == "image_undecodable"
    assert "not an image" in error["msg"]


def test_the_demo_example_runs(ocr: Platform) -> None:
    examples_file = APPS / "ocr" / "examples.json"
    assert examples_file.stat().st_size < 60_000
    for example in json.loads(examples_file.read_text()):
        assert example["path"] == "/"
        out = _read(ocr, example["input"])
        assert "KLIEG2026" in _squashed(out["text"])
        assert httpx.get(out["annotated"]["url"], timeout=30).status_code == 200
