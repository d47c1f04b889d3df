"""Media in and out of endpoints: ``File``, ``Image``, ``Video``, ``Audio`` (fal-compatible fields).

An endpoint returns media by building it from bytes; Klieg stores the bytes in the platform's
blob store and the caller receives a URL. An endpoint receives media as a URL (http(s), a
``data:`` URI, or one from ``POST /files/upload``) and reads it with ``read()``, or
``to_pil()`` for an image. Given ``loc``, the input's place in the request body, both turn an
input that cannot be read or decoded into a 422 ``klieg.ValidationError`` naming that field,
in pydantic's shape: ``[{"loc": ["body", *loc], "msg": "...", "type": "url_unreadable"}]``
(or ``image_undecodable``, ``image_too_large``).

Example::

    @app.function()
    def thumbnail(req: ThumbIn) -> ThumbOut:
        source = req.image.to_pil(loc=["image"], max_pixels=40_000_000)   # downloads and decodes
        source.thumbnail((128, 128))
        return ThumbOut(image=klieg.Image.from_pil(source))   # uploaded; the caller gets a URL

Inside a runner, ``from_bytes`` keeps the bytes until the response is sent and uses a
placeholder URL (``klieg-media://<token>``) that the platform replaces with the stored file's
URL. Outside a runner (a plain script, a test) the URL is a ``data:`` URI instead.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

import httpx
from pydantic import BaseModel

from klieg.exceptions import ValidationError

PENDING_SCHEME = "klieg-media://"
INPUT_URL_SCHEMES = ("http", "https", "data")
"""The schemes a media URL in a request may use (the platform's own file URLs are https or
http); the gateway refuses any other (``file:``, ``ftp:``, ...) with a 422 before queueing."""
F = TypeVar("F", bound="File")
I = TypeVar("I", bound="Image")  # noqa: E741
Loc = Sequence[str | int]
"""A field's place in the request body, as in pydantic's errors: ``["images", 2]``."""


class _Pending:
    """Bytes of media made during the current request, by token (the runner drains it)."""

    def __init__(self) -> None:
        self.active = False
        self._items: dict[str, tuple[bytes, str, str]] = {}
        self._lock = threading.Lock()

    def add(self, data: bytes, content_type: str, file_name: str) -> str:
        token = secrets.token_hex(12)
        with self._lock:
            self._items[token] = (data, content_type, file_name)
        return token

    def take(self, token: str) -> tuple[bytes, str, str] | None:
        with self._lock:
            return self._items.pop(token, None)

    def get(self, token: str) -> tuple[bytes, str, str] | None:
        with self._lock:
            return self._items.get(token)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


PENDING = _Pending()


class File(BaseModel):
    """A file by URL, with fal's fields: ``url``, ``content_type``, ``file_name``, ``file_size``.

    Example::

        doc = klieg.File.from_bytes(b"hello", content_type="text/plain", file_name="a.txt")
        assert doc.read() == b"hello"
    """

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None

    @classmethod
    def from_bytes(
        cls: type[F],
        data: bytes,
        content_type: str | None = None,
        file_name: str | None = None,
        **fields: Any,
    ) -> F:
        """A file holding ``data``; stored by the platform when returned from an endpoint."""
        name = file_name or "file" + (mimetypes.guess_extension(content_type or "") or ".bin")
        kind = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        if PENDING.active:
            url = PENDING_SCHEME + PENDING.add(data, kind, name)
        else:
            url = f"data:{kind};base64,{base64.b64encode(data).decode()}"
        return cls(url=url, content_type=kind, file_name=name, file_size=len(data), **fields)

    @classmethod
    def from_path(cls: type[F], path: str | Path, content_type: str | None = None) -> F:
        p = Path(path)
        return cls.from_bytes(p.read_bytes(), content_type, p.name)

    def read(self, *, timeout: float = 60.0, loc: Loc | None = None) -> bytes:
        """The file's bytes: decoded from a ``data:`` URI, or downloaded.

        Without ``loc``, httpx's errors and ``ValueError`` propagate; with it, they become a 422
        ``klieg.ValidationError`` naming ``["body", *loc]``, type ``url_unreadable``.
        """
        try:
            return self._read(timeout)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            if loc is None:
                raise
            msg = f"cannot read {self.url[:80]!r}: {exc}"
            raise _invalid(loc, msg, "url_unreadable") from exc

    def _read(self, timeout: float) -> bytes:
        if self.url.startswith("data:"):
            head, _, payload = self.url.partition(",")
            if head.endswith(";base64"):
                return base64.b64decode(payload)
            return unquote_to_bytes(payload)
        if self.url.startswith(PENDING_SCHEME):
            item = PENDING.get(self.url.removeprefix(PENDING_SCHEME))
            if item is None:
                raise ValueError(f"media {self.url} is no longer available")
            return item[0]
        response = httpx.get(self.url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
        return response.content


class Image(File):
    """An image file; ``width`` and ``height`` in pixels when known.

    Example::

        img = klieg.Image.from_pil(pil_image)        # PNG by default
        pil = img.to_pil()                           # loaded, upright, pil.format == "PNG"
        pil = req.image.to_pil(loc=["image"], max_pixels=40_000_000)   # 422s name "image"
    """

    width: int | None = None
    height: int | None = None

    @classmethod
    def from_pil(cls: type[I], image: Any, format: str = "png") -> I:
        buffer = io.BytesIO()
        image.save(buffer, format=format.upper())
        kind = f"image/{format.lower()}"
        return cls.from_bytes(
            buffer.getvalue(), kind, f"image.{format.lower()}",
            width=image.width, height=image.height,
        )  # fmt: skip

    def to_pil(self, *, loc: Loc | None = None, max_pixels: int | None = None) -> Any:
        """The image read (``read``) and decoded (``open_image``): loaded, upright, in the
        source's mode and ``format``; ``loc`` and ``max_pixels`` as for those two."""
        return open_image(self.read(loc=loc), loc=loc, max_pixels=max_pixels)


class Video(File):
    """A video file (for example ``video/mp4``)."""


class Audio(File):
    """An audio file (for example ``audio/wav``)."""


def open_image(data: bytes, *, loc: Loc | None = None, max_pixels: int | None = None) -> Any:
    """``data`` decoded by Pillow into a loaded, upright PIL image (EXIF orientation applied) in
    the source's mode, with the source's ``format``.

    An image of more than ``max_pixels`` pixels is refused from its header, before decoding.
    Without ``loc``, Pillow's errors propagate (``DecompressionBombError`` for too many pixels);
    with it, every failure is a 422 ``klieg.ValidationError`` naming ``["body", *loc]``, type
    ``image_too_large`` or ``image_undecodable``. Pillow is the app's own requirement.

    Example::

        data = req.image.read(loc=["image"])
        pil = klieg.media.open_image(data, loc=["image"], max_pixels=40_000_000)
    """
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    try:
        image = PILImage.open(io.BytesIO(data))
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise PILImage.DecompressionBombError(
                f"image is {image.width}x{image.height}, more than {max_pixels} pixels"
            )
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy; an animation stays seekable
    except PILImage.DecompressionBombError as exc:
        if loc is None:
            raise
        raise _invalid(loc, str(exc), "image_too_large") from exc
    except UnidentifiedImageError as exc:
        if loc is None:
            raise
        msg = f"the {len(data)} bytes are not an image in a format Pillow reads"
        raise _invalid(loc, msg, "image_undecodable") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if loc is None:
            raise
        msg = f"the image cannot be decoded ({type(exc).__name__}: {exc})"
        raise _invalid(loc, msg, "image_undecodable") from exc
    return image


def _invalid(loc: Loc, msg: str, kind: str) -> ValidationError:
    """A 422 in pydantic's shape naming ``loc`` in the body (a bare string is one name)."""
    path = [loc] if isinstance(loc, str) else list(loc)
    return ValidationError([{"loc": ["body", *path], "msg": msg, "type": kind}])
