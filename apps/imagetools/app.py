"""imagetools: resize, thumbnail, convert and tile images with Pillow, on CPU.

    POST /{owner}/imagetools/resize     {"image": {"url": ...}, "width": 256, "height": 256,
                                         "mode": "fit"}                        -> {"image": Image}
    POST /{owner}/imagetools/thumbnail  {"image": {"url": ...}, "size": 128}   -> {"image": Image}
    POST /{owner}/imagetools/convert    {"image": {"url": ...}, "format": "webp", "quality": 85}
                                                                               -> {"image": Image}
    POST /{owner}/imagetools/grid       {"images": [{"url": ...}, ...], "columns": 2, "gap": 4,
                                         "background": "#ffffff"}              -> {"image": Image}
    POST /{owner}/imagetools/reveal     as /grid, plus "hold": 2         -> {"frames": [Image, ...]}

Contracts:

- Inputs are URLs: http(s), ``data:`` URIs, or uploads (``POST /files/upload``). EXIF orientation
  is applied on load, so a phone photo comes out upright.
- An input that cannot be fetched or decoded, or that has more than ``MAX_INPUT_PIXELS`` pixels,
  fails with 422 (``klieg.ValidationError``) whose detail has pydantic's shape:
  ``[{"loc": ["body", "image"], "msg": "...", "type": "image_undecodable"}]``.
- ``/resize`` and ``/thumbnail`` keep the input's format when it is PNG, JPEG or WebP and write PNG
  otherwise; ``/grid`` writes PNG; ``/convert`` writes the format asked for (JPEG has no alpha,
  so transparent pixels become white). Every output's ``content_type``, ``width`` and ``height``
  describe the stored file.
- ``/grid`` lays the images out in rows of ``columns``; every cell is as large as the largest
  image, each image is centred in its cell, unscaled, and cells are ``gap`` pixels apart on
  ``background``. At most ``MAX_GRID_IMAGES`` images, ``MAX_SIDE`` pixels a side.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, field_validator

import klieg

if TYPE_CHECKING:
    from PIL import Image as PILImage

app = klieg.App("imagetools", requirements=["pillow>=10"], python="3.11")

MAX_SIDE = 8192
"""Largest width or height of any output."""
MAX_INPUT_PIXELS = 40_000_000
"""Largest input, in pixels (checked from the header, before the image is decoded)."""
MAX_GRID_IMAGES = 64
MAX_GRID_INPUT_PIXELS = 64_000_000
"""Largest total of the pixels of all the images of one grid."""

Format = Literal["png", "jpeg", "webp"]
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
WRITABLE: dict[str, Format] = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
"""Pillow's format names of the inputs whose format /resize and /thumbnail keep."""


class ResizeIn(BaseModel):
    image: klieg.Image
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)
    mode: Literal["fit", "fill", "stretch"] = Field(
        "fit",
        description=(
            "fit: keep the aspect ratio, as large as fits inside width x height (one side may be "
            "shorter); fill: keep the aspect ratio, cover width x height and crop the overflow "
            "around the centre; stretch: exactly width x height, aspect ratio ignored"
        ),
    )


class ThumbnailIn(BaseModel):
    image: klieg.Image
    size: int = Field(128, ge=1, le=1024, description="longest side; smaller images are kept")


class ConvertIn(BaseModel):
    image: klieg.Image
    format: Format
    quality: int = Field(90, ge=1, le=100, description="JPEG and WebP quality; PNG is lossless")


class GridIn(BaseModel):
    images: list[klieg.Image] = Field(min_length=1, max_length=MAX_GRID_IMAGES)
    columns: int | None = Field(
        None, ge=1, le=MAX_GRID_IMAGES, description="default: every image in one row (a strip)"
    )
    gap: int = Field(0, ge=0, le=256, description="pixels between cells")
    background: str = Field(
        "#ffffff",
        max_length=64,
        description='a Pillow colour: "#rrggbb", "#rrggbbaa", "rgb(...)" or a name like "white"',
    )

    @field_validator("background")
    @classmethod
    def _known_colour(cls, value: str) -> str:
        from PIL import ImageColor

        ImageColor.getrgb(value)  # raises ValueError (-> 422) for an unknown colour
        return value


class ImageOut(BaseModel):
    image: klieg.Image


class RevealIn(GridIn):
    hold: int = Field(2, ge=0, le=64, description="extra frames of the whole grid at the end")


class FramesOut(BaseModel):
    frames: list[klieg.Image]


def _invalid(loc: list[str | int], msg: str, kind: str) -> klieg.ValidationError:
    return klieg.ValidationError([{"loc": ["body", *loc], "msg": msg, "type": kind}])


def _load(media: klieg.Image, loc: list[str | int]) -> PILImage.Image:
    """The input upright, in L, LA, RGB or RGBA; a 422 naming ``loc`` if it cannot be fetched or
    decoded or has more than ``MAX_INPUT_PIXELS`` pixels."""
    return _normalized(media.to_pil(loc=loc, max_pixels=MAX_INPUT_PIXELS))


def _normalized(image: PILImage.Image) -> PILImage.Image:
    """The image in a mode every operation and encoder here accepts: L, LA, RGB or RGBA."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    has_alpha = image.mode in ("PA", "La", "RGBa") or "transparency" in image.info
    converted = image.convert("RGBA" if has_alpha else "RGB")
    converted.format = image.format
    return converted


def _header_pixels(data: bytes) -> int:
    """Width x height from the header alone; 0 when it is unreadable (decoding then says why)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width * image.height
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        return 0


def _source_format(image: PILImage.Image) -> Format:
    """The input's own format when it is one we write, else PNG."""
    return WRITABLE.get(image.format or "", "png")


def _encode(image: PILImage.Image, fmt: Format, quality: int, stem: str) -> klieg.Image:
    """``image`` written as ``fmt``; alpha is flattened onto white for JPEG, which has none."""
    from PIL import Image

    out = image
    if fmt == "jpeg" and image.mode in ("LA", "RGBA"):
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        out = flat
    elif fmt == "webp" and image.mode in ("L", "LA"):
        out = image.convert("RGBA" if image.mode == "LA" else "RGB")
    buffer = io.BytesIO()
    if fmt == "png":
        out.save(buffer, format="PNG")
    else:
        out.save(buffer, format=fmt.upper(), quality=quality)
    return klieg.Image.from_bytes(
        buffer.getvalue(),
        CONTENT_TYPES[fmt],
        f"{stem}.{EXTENSIONS[fmt]}",
        width=out.width,
        height=out.height,
    )


def resize_image(image: PILImage.Image, width: int, height: int, mode: str) -> PILImage.Image:
    """``image`` resized by ``mode`` (see ``ResizeIn.mode``), with Lanczos resampling."""
    from PIL import Image, ImageOps

    lanczos = Image.Resampling.LANCZOS
    if mode == "fit":
        return ImageOps.contain(image, (width, height), method=lanczos)
    if mode == "fill":
        return ImageOps.fit(image, (width, height), method=lanczos)
    return image.resize((width, height), lanczos)


def compose_grid(
    images: list[PILImage.Image], columns: int, gap: int, background: str
) -> PILImage.Image:
    """Images in rows of ``columns`` (the last row may be short), each centred in a cell as large
    as the largest image; RGBA when the background or any image has alpha, else RGB."""
    from PIL import Image, ImageColor

    cell_w = max(i.width for i in images)
    cell_h = max(i.height for i in images)
    rows = -(-len(images) // columns)
    width = columns * cell_w + (columns - 1) * gap
    height = rows * cell_h + (rows - 1) * gap
    if width > MAX_SIDE or height > MAX_SIDE:
        raise _invalid(
            ["images"], f"the grid would be {width}x{height}, over {MAX_SIDE} a side", "too_large"
        )
    rgb = ImageColor.getrgb(background)
    fill = (rgb[0], rgb[1], rgb[2], rgb[3] if len(rgb) == 4 else 255)
    canvas = Image.new("RGBA", (width, height), fill)
    for n, image in enumerate(images):
        row, col = divmod(n, columns)
        x = col * (cell_w + gap) + (cell_w - image.width) // 2
        y = row * (cell_h + gap) + (cell_h - image.height) // 2
        canvas.alpha_composite(image.convert("RGBA"), (x, y))
    opaque = fill[3] == 255 and all(i.mode in ("L", "RGB") for i in images)
    return canvas.convert("RGB") if opaque else canvas


@app.cls(keep_alive=300, max_concurrency=2)
class ImageTools:
    def setup(self) -> None:
        from PIL import features

        if not features.check("webp"):
            raise RuntimeError("this Pillow build cannot write WebP")

    @klieg.endpoint("/resize")
    def resize(self, req: ResizeIn) -> ImageOut:
        source = _load(req.image, ["image"])
        resized = resize_image(source, req.width, req.height, req.mode)
        return ImageOut(image=_encode(resized, _source_format(source), 90, "resized"))

    @klieg.endpoint("/thumbnail")
    def thumbnail(self, req: ThumbnailIn) -> ImageOut:
        from PIL import Image

        source = _load(req.image, ["image"])
        thumb = source.copy()
        thumb.thumbnail((req.size, req.size), Image.Resampling.LANCZOS)
        return ImageOut(image=_encode(thumb, _source_format(source), 90, "thumbnail"))

    @klieg.endpoint("/convert")
    def convert(self, req: ConvertIn) -> ImageOut:
        source = _load(req.image, ["image"])
        return ImageOut(image=_encode(source, req.format, req.quality, "converted"))

    @klieg.endpoint("/grid")
    def grid(self, req: GridIn) -> ImageOut:
        images = _load_grid(req)
        columns = min(req.columns or len(images), len(images))
        tiled = compose_grid(images, columns, req.gap, req.background)
        return ImageOut(image=_encode(tiled, "png", 90, "grid"))

    @klieg.endpoint("/reveal")
    def reveal(self, req: RevealIn) -> FramesOut:
        """The grid of ``/grid`` built up one image at a time: frame k shows the first k
        images in their cells (the rest is background), then ``hold`` frames of the whole
        grid; every frame has the whole grid's size."""
        from PIL import Image

        images = _load_grid(req)
        columns = min(req.columns or len(images), len(images))
        blanks = [Image.new("RGBA", i.size, (0, 0, 0, 0)) for i in images]
        frames: list[klieg.Image] = []
        for shown in [*range(1, len(images) + 1), *[len(images)] * req.hold]:
            cells = images[:shown] + blanks[shown:]
            frame = compose_grid(cells, columns, req.gap, req.background)
            frames.append(_encode(frame.convert("RGB"), "png", 90, f"frame-{len(frames):03d}"))
        return FramesOut(frames=frames)


def _load_grid(req: GridIn) -> list[PILImage.Image]:
    """The grid's images, each as ``_load`` gives it; their total pixels are checked from the
    headers before any is decoded."""
    sources = [media.read(loc=["images", n]) for n, media in enumerate(req.images)]
    if sum(_header_pixels(data) for data in sources) > MAX_GRID_INPUT_PIXELS:
        raise _invalid(
            ["images"], f"the images hold over {MAX_GRID_INPUT_PIXELS} pixels", "too_large"
        )
    return [
        _normalized(klieg.media.open_image(data, loc=["images", n], max_pixels=MAX_INPUT_PIXELS))
        for n, data in enumerate(sources)
    ]
