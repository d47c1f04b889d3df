"""Reading and decoding input media: bytes from data: URIs and http(s) URLs, images loaded and
upright with their source format, and every failure a 422 naming the field when ``loc`` is given."""

from __future__ import annotations

import base64
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

import klieg
from klieg.media import open_image

pytestmark = pytest.mark.timeout(30)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _encoded(image: PILImage.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _halves(width: int, height: int) -> PILImage.Image:
    """An RGB image whose left half is red and right half blue."""
    image = PILImage.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def _data_uri(data: bytes, kind: str = "image/png") -> klieg.Image:
    return klieg.Image(url=f"data:{kind};base64,{base64.b64encode(data).decode()}")


def _close(pixel: Any, expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def _only_error(raised: pytest.ExceptionInfo[klieg.ValidationError]) -> dict[str, Any]:
    assert raised.value.status_code == 422
    detail = raised.value.detail
    assert isinstance(detail, list) and len(detail) == 1
    error: dict[str, Any] = detail[0]
    assert set(error) == {"loc", "msg", "type"} and error["msg"]
    return error


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: ``/red.png`` is a 6x4 red PNG, any other path a 404."""
    png = _encoded(PILImage.new("RGB", (6, 4), RED), "PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/red.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png" if found else "text/plain")
            body = png if found else b"no such file"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a local port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/image.png"


def test_read_decodes_data_uris_and_downloads_urls(server: str) -> None:
    assert klieg.File(url="data:text/plain,hello%20world").read() == b"hello world"
    assert klieg.File.from_bytes(b"\x00\x01", "application/octet-stream").read() == b"\x00\x01"
    downloaded = klieg.File(url=f"{server}/red.png").read(loc=["file"])
    assert PILImage.open(io.BytesIO(downloaded)).size == (6, 4)


def test_to_pil_returns_a_loaded_image_with_its_format() -> None:
    source = _halves(10, 6)
    for image in (klieg.Image.from_pil(source), _data_uri(_encoded(source, "PNG"))):
        for pil in (image.to_pil(), image.to_pil(loc=["image"], max_pixels=60)):
            assert pil.size == (10, 6) and pil.mode == "RGB" and pil.format == "PNG"
            assert pil.getpixel((0, 0)) == RED and pil.getpixel((9, 5)) == BLUE
    jpeg = _data_uri(_encoded(source, "JPEG", quality=95), "image/jpeg").to_pil(loc=["image"])
    assert jpeg.format == "JPEG" and _close(jpeg.getpixel((1, 1)), RED)


def test_to_pil_keeps_the_source_mode() -> None:
    palette = PILImage.new("P", (4, 4), 3)
    pil = _data_uri(_encoded(palette, "PNG", transparency=3)).to_pil(loc=["image"])
    assert pil.mode == "P" and "transparency" in pil.info and pil.format == "PNG"
    grey = _data_uri(_encoded(PILImage.new("LA", (4, 4), (9, 128)), "PNG")).to_pil()
    assert grey.mode == "LA" and grey.getpixel((0, 0)) == (9, 128)


def test_to_pil_keeps_an_animation_seekable() -> None:
    frames = [PILImage.new("RGB", (8, 8), colour) for colour in (RED, BLUE, (0, 255, 0))]
    data = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    pil = _data_uri(data, "image/gif").to_pil(loc=["image"])
    assert pil.format == "GIF" and pil.n_frames == 3
    pil.seek(1)
    assert pil.convert("RGB").getpixel((0, 0)) == BLUE


def test_to_pil_applies_exif_orientation() -> None:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are to be turned 90 degrees clockwise
    data = _encoded(_halves(40, 20), "JPEG", quality=95, exif=exif)
    assert PILImage.open(io.BytesIO(data)).size == (40, 20)
    for pil in (_data_uri(data, "image/jpeg").to_pil(), open_image(data, loc=["image"])):
        assert pil.size == (20, 40) and pil.format == "JPEG"
        assert _close(pil.getpixel((10, 5)), RED) and _close(pil.getpixel((10, 35)), BLUE)
        assert pil.getexif().get(0x0112, 1) == 1


def test_too_many_pixels_is_refused_from_the_header() -> None:
    data = _encoded(_halves(10, 6), "PNG")
    truncated = data[: data.index(b"IDAT") + 8]  # the header is whole, the pixels are not
    for body in (data, truncated):
        with pytest.raises(klieg.ValidationError) as raised:
            open_image(body, loc=["images", 2], max_pixels=59)
        error = _only_error(raised)
        assert error["loc"] == ["body", "images", 2] and error["type"] == "image_too_large"
        assert "10x6" in error["msg"] and "59" in error["msg"]
    with pytest.raises(klieg.ValidationError) as raised:
        open_image(truncated, loc=["image"])
    assert _only_error(raised)["type"] == "image_undecodable"
    with pytest.raises(klieg.ValidationError) as raised:
        _data_uri(data).to_pil(loc=["image"], max_pixels=59)
    assert _only_error(raised)["type"] == "image_too_large"
    with pytest.raises(PILImage.DecompressionBombError):
        _data_uri(data).to_pil(max_pixels=59)


def test_pillows_own_pixel_limit_is_image_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    image = _data_uri(_encoded(_halves(64, 64), "PNG"))
    with pytest.raises(klieg.ValidationError) as raised:
        image.to_pil(loc=["image"])
    error = _only_error(raised)
    assert error["loc"] == ["body", "image"] and error["type"] == "image_too_large"


def test_bytes_that_are_not_an_image_are_image_undecodable() -> None:
    garbage = _data_uri(b"not an image")
    with pytest.raises(klieg.ValidationError) as raised:
        garbage.to_pil(loc=["images", 1])
    error = _only_error(raised)
    assert error["loc"] == ["body", "images", 1] and error["type"] == "image_undecodable"
    assert "12 bytes are not an image" in error["msg"]
    with pytest.raises(UnidentifiedImageError):
        garbage.to_pil()


def test_a_truncated_image_is_image_undecodable() -> None:
    data = _encoded(_halves(64, 64), "PNG")
    with pytest.raises(klieg.ValidationError) as raised:
        open_image(data[: len(data) // 2], loc="image", max_pixels=64 * 64)
    error = _only_error(raised)
    assert error["loc"] == ["body", "image"] and error["type"] == "image_undecodable"
    assert "cannot be decoded" in error["msg"]
    with pytest.raises(OSError):
        open_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "url",
    [
        "closed-port",
        "/missing.png",
        "data:image/png;base64,abc",
        "klieg-media://no-such-token",
        "ftp://example.invalid/a.png",
        "http://\x00",
    ],
)
def test_unreadable_urls_are_url_unreadable(url: str, server: str, closed_port_url: str) -> None:
    url = {"closed-port": closed_port_url, "/missing.png": server + url}.get(url, url)
    image = klieg.Image(url=url)
    for read in (image.read, image.to_pil):
        with pytest.raises(klieg.ValidationError) as raised:
            read(loc=["frames", 0])
        error = _only_error(raised)
        assert error["loc"] == ["body", "frames", 0] and error["type"] == "url_unreadable"
        assert error["msg"].startswith(f"cannot read {url[:80]!r}")
        assert raised.value.__cause__ is not None


def test_without_loc_read_errors_propagate(server: str, closed_port_url: str) -> None:
    with pytest.raises(httpx.ConnectError):
        klieg.File(url=closed_port_url).read()
    with pytest.raises(httpx.HTTPStatusError):
        klieg.Image(url=f"{server}/missing.png").to_pil()
    with pytest.raises(ValueError, match="no longer available"):
        klieg.File(url="klieg-media://no-such-token").read()
