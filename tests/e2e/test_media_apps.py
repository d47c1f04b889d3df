"""The imagetools and video apps on a real platform, over HTTP: every output is fetched by its
signed URL and decoded (Pillow for images, PyAV for the MP4) and checked for size, format,
frame count and rate; undecodable inputs get a 422 that names the field; outputs chain by URL."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import av
import httpx
import pytest
from PIL import Image as PILImage
from PIL import ImageSequence

from tests.e2e.platform import APPS, Platform

pytestmark = pytest.mark.timeout(300)

Colour = tuple[int, int, int]


@pytest.fixture(scope="module")
def media_apps(platform: Platform) -> Platform:
    platform.deploy(APPS / "imagetools" / "app.py")
    platform.deploy(APPS / "video" / "app.py")
    return platform


def _colour(i: int) -> Colour:
    return ((i * 37 + 20) % 256, (230 - i * 53) % 256, (i * 91 + 40) % 256)


def _data_uri(image: PILImage.Image, fmt: str = "PNG") -> dict[str, str]:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return {"url": f"data:image/{fmt.lower()};base64,{encoded}"}


def _solid(size: tuple[int, int], colour: tuple[int, ...], mode: str = "RGB") -> dict[str, str]:
    return _data_uri(PILImage.new(mode, size, colour))


def _call(p: Platform, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    with p.http() as http:
        r = http.post(f"/local/{path}", json=body)
    assert r.status_code == status, r.text
    return dict(r.json())


def _fetch(media: dict[str, Any], content_type: str) -> bytes:
    r = httpx.get(media["url"], timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"] == media["content_type"] == content_type
    assert len(r.content) == media["file_size"]
    return r.content


def _image(media: dict[str, Any], content_type: str, fmt: str) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(_fetch(media, content_type)))
    assert image.format == fmt
    assert image.size == (media["width"], media["height"])
    return image


def _frame_count(image: PILImage.Image) -> int:
    return sum(1 for _ in ImageSequence.Iterator(image))


def _close(got: Any, want: Colour, tolerance: int = 12) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(got[:3], want, strict=True))


def test_resize_fit_fill_and_stretch(media_apps: Platform) -> None:
    source = _solid((60, 40), (200, 30, 30))
    expected = {"fit": (30, 20), "fill": (30, 30), "stretch": (30, 30)}
    for mode, size in expected.items():
        body = {"image": source, "width": 30, "height": 30, "mode": mode}
        image = _image(_call(media_apps, "imagetools/resize", body)["image"], "image/png", "PNG")
        assert image.size == size and image.mode == "RGB"
        assert _close(image.getpixel((size[0] // 2, size[1] // 2)), (200, 30, 30))
    jpeg = _data_uri(PILImage.new("RGB", (60, 40), (10, 120, 200)), "JPEG")
    out = _call(media_apps, "imagetools/resize", {"image": jpeg, "width": 50, "height": 10})
    assert _image(out["image"], "image/jpeg", "JPEG").size == (15, 10)


def test_thumbnail_shrinks_to_the_longest_side_and_keeps_small_images(media_apps: Platform) -> None:
    big = _call(media_apps, "imagetools/thumbnail", {"image": _solid((300, 200), (0, 90, 0))})
    assert _image(big["image"], "image/png", "PNG").size == (128, 85)
    body = {"image": _solid((30, 12), (0, 90, 0)), "size": 64}
    small = _call(media_apps, "imagetools/thumbnail", body)
    assert _image(small["image"], "image/png", "PNG").size == (30, 12)


def test_convert_writes_the_asked_format(media_apps: Platform) -> None:
    translucent = _solid((40, 30), (0, 0, 255, 0), mode="RGBA")
    wanted = {
        "png": ("image/png", "PNG", "RGBA"),
        "jpeg": ("image/jpeg", "JPEG", "RGB"),
        "webp": ("image/webp", "WEBP", "RGBA"),
    }
    outs = {}
    for fmt, (content_type, pil_format, mode) in wanted.items():
        outs[fmt] = _call(media_apps, "imagetools/convert", {"image": translucent, "format": fmt})
        image = _image(outs[fmt]["image"], content_type, pil_format)
        assert image.size == (40, 30) and image.mode == mode
        assert outs[fmt]["image"]["file_name"] == f"converted.{'jpg' if fmt == 'jpeg' else fmt}"
        if mode == "RGBA":
            assert image.getchannel("A").getpixel((5, 5)) == 0  # alpha kept
    flat = _image(outs["jpeg"]["image"], "image/jpeg", "JPEG")
    assert _close(flat.getpixel((20, 15)), (255, 255, 255))  # flattened onto white
    noise = _data_uri(PILImage.effect_noise((64, 64), 80).convert("RGB"))
    sizes = [
        _call(media_apps, "imagetools/convert", {"image": noise, "format": "jpeg", "quality": q})
        for q in (10, 95)
    ]
    assert sizes[0]["image"]["file_size"] < sizes[1]["image"]["file_size"]


def test_grid_tiles_images_with_gaps_and_background(media_apps: Platform) -> None:
    tiles = [_solid((20, 10), _colour(i)) for i in range(3)] + [_solid((10, 20), _colour(3))]
    body = {"images": tiles, "columns": 2, "gap": 4, "background": "#000000"}
    grid = _image(_call(media_apps, "imagetools/grid", body)["image"], "image/png", "PNG")
    assert grid.size == (2 * 20 + 4, 2 * 20 + 4) and grid.mode == "RGB"
    assert _close(grid.getpixel((10, 10)), _colour(0))  # cells are 20x20: image centred
    assert _close(grid.getpixel((34, 10)), _colour(1))
    assert _close(grid.getpixel((10, 34)), _colour(2))
    assert _close(grid.getpixel((34, 34)), _colour(3))
    assert grid.getpixel((22, 10)) == (0, 0, 0)  # the gap
    assert grid.getpixel((10, 1)) == (0, 0, 0)  # the background around a short image
    strip = _call(media_apps, "imagetools/grid", {"images": tiles[:3], "gap": 2})["image"]
    assert _image(strip, "image/png", "PNG").size == (3 * 20 + 2 * 2, 10)


def test_frames_to_video_is_h264_mp4_with_every_frame_and_a_gif(media_apps: Platform) -> None:
    frames = [_solid((33, 21), _colour(i)) for i in range(10)]
    out = _call(media_apps, "video/frames-to-video", {"frames": frames, "fps": 5})
    assert (out["width"], out["height"], out["num_frames"], out["fps"]) == (34, 22, 10, 5)
    assert out["encoder"] in ("libx264", "libopenh264")
    mp4 = _fetch(out["video"], "video/mp4")
    with av.open(io.BytesIO(mp4), mode="r") as container:
        assert "mp4" in container.format.name
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 5 and stream.frames == 10
        decoded = [f.to_image() for f in container.decode(stream)]
    assert len(decoded) == 10 and decoded[0].size == (34, 22)
    for i, frame in enumerate(decoded):
        assert _close(frame.getpixel((17, 11)), _colour(i), tolerance=16), i
    gif = _image(out["preview"], "image/gif", "GIF")
    assert _frame_count(gif) == 10 and gif.info["loop"] == 0 and gif.info["duration"] == 200
    once = _call(media_apps, "video/frames-to-video", {"frames": frames[:3], "loop_preview": False})
    gif = _image(once["preview"], "image/gif", "GIF")
    assert _frame_count(gif) == 3 and "loop" not in gif.info


def test_undecodable_inputs_are_422_naming_the_field(media_apps: Platform) -> None:
    junk = {"url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}
    r = _call(media_apps, "imagetools/resize", {"image": junk, "width": 8, "height": 8}, 422)
    assert r["error_type"] == "ValidationError"
    (error,) = r["detail"]
    assert error["loc"] == ["body", "image"] and error["type"] == "image_undecodable"
    assert "not an image" in error["msg"]
    grid = _call(media_apps, "imagetools/grid", {"images": [_solid((4, 4), (1, 2, 3)), junk]}, 422)
    assert grid["detail"][0]["loc"] == ["body", "images", 1]
    frames = {"frames": [_solid((8, 8), (1, 2, 3)), junk]}
    video = _call(media_apps, "video/frames-to-video", frames, 422)
    assert video["detail"][0]["loc"] == ["body", "frames", 1]
    not_video = {"url": "data:video/mp4;base64," + base64.b64encode(b"\0" * 64).decode()}
    thumbs = _call(media_apps, "video/thumbnails", {"video": not_video}, 422)
    assert thumbs["detail"][0]["type"] == "video_undecodable"
    assert thumbs["detail"][0]["loc"] == ["body", "video"]
    zero = _call(media_apps, "imagetools/resize", {"image": junk, "width": 0, "height": 8}, 422)
    assert zero["detail"][0]["loc"] == ["body", "width"]


def test_resize_then_video_then_thumbnails_chain_by_url(media_apps: Platform) -> None:
    resized = [
        _call(
            media_apps,
            "imagetools/resize",
            {"image": _solid((40, 30), _colour(i)), "width": 64, "height": 48, "mode": "stretch"},
        )["image"]
        for i in range(5)
    ]
    assert all(r["url"].startswith(("http://", "https://")) for r in resized)
    frames = [{"url": r["url"]} for r in resized]
    video = _call(media_apps, "video/frames-to-video", {"frames": frames, "fps": 10})
    assert (video["width"], video["height"], video["num_frames"]) == (64, 48, 5)
    mp4 = {"url": video["video"]["url"]}
    out = _call(media_apps, "video/thumbnails", {"video": mp4, "count": 5})
    assert out["timestamps"] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert len(out["images"]) == 5
    for i, media in enumerate(out["images"]):
        image = _image(media, "image/png", "PNG")
        assert image.size == (64, 48) and image.mode == "RGB"
        assert _close(image.getpixel((32, 24)), _colour(i), tolerance=16), i
    small = _call(media_apps, "video/thumbnails", {"video": mp4, "count": 2, "max_side": 32})
    assert [(m["width"], m["height"]) for m in small["images"]] == [(32, 24), (32, 24)]
    assert small["timestamps"] == [0.1, 0.3]


@pytest.mark.parametrize("app", ["imagetools", "video"])
def test_the_demo_examples_run(media_apps: Platform, app: str) -> None:
    examples_file = APPS / app / "examples.json"
    assert examples_file.stat().st_size < 10_000
    for example in json.loads(examples_file.read_text()):
        out = _call(media_apps, f"{app}{example['path']}", example["input"])
        media = [v for v in out.values() if isinstance(v, dict)]
        media += [m for v in out.values() if isinstance(v, list) for m in v if isinstance(m, dict)]
        assert media, out
        for item in media:
            assert httpx.get(item["url"], timeout=30).status_code == 200
