"""ocr: read the printed text in an image with the PP-OCRv6 models, on CPU.

    POST /{owner}/ocr  {"image": {"url": ...}, "min_confidence": 0.5}
      -> {"text": "KLIEG 2026\\nHELLO WORLD",
          "lines": [{"text": "KLIEG 2026", "confidence": 0.9999,
                     "box": [[x, y], [x, y], [x, y], [x, y]]}, ...],
          "annotated": Image (PNG: the input with every line's box drawn on it)}

The model is RapidOCR (``rapidocr`` 3.10.0, Apache-2.0, by RapidAI) running PaddleOCR's
PP-OCRv6 small text detector, its mobile v2.0 text direction classifier and its PP-OCRv6 small
recogniser (Chinese, English letters, digits and punctuation), exported to ONNX and run on the
CPU by ONNX Runtime; no torch. The three ``.onnx`` files (about 32 MB) ship inside the package's
wheel on PyPI, and their weights are Apache-2.0 too (Baidu / PaddleOCR; the wheel carries the
attribution in ``MODEL_LICENSES.md``). ``setup()`` passes their paths explicitly, which skips
RapidOCR's downloader, so nothing is fetched at run time; it loads them once per runner and
warms them up with one small rendered word. OpenCV comes as ``opencv-python-headless`` (no
libGL needed).

Contracts:

- The input is a URL: http(s), a ``data:`` URI, or an upload (``POST /files/upload``). EXIF
  orientation is applied on load and transparent pixels are put on white.
- An input that cannot be fetched or decoded, or that has more than ``MAX_INPUT_PIXELS`` pixels,
  fails with 422 (``klieg.ValidationError``) whose detail has pydantic's shape:
  ``[{"loc": ["body", "image"], "msg": "...", "type": "image_undecodable"}]``.
- ``lines`` holds each detected text line whose recognition confidence is at least
  ``min_confidence``, in reading order: rows top to bottom (lines whose vertical centres are less
  than half a line height apart share a row), and left to right within a row. ``box`` is the
  line's quadrilateral in input pixels (clockwise from the top left), inside the image.
  ``text`` is the lines' texts joined by ``\\n``; an image without text gives ``""`` and ``[]``.
- ``annotated`` is a PNG of the input's size with each line's box outlined.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

import klieg

if TYPE_CHECKING:
    from PIL import Image as PILImage

app = klieg.App(
    "ocr",
    requirements=[
        "rapidocr==3.10.0",
        "onnxruntime==1.32.0",
        "opencv-python-headless==5.0.0.93",
        "numpy==2.4.6",
        "pillow==13.0.0",
    ],
    python="3.11",
)

MODELS = {
    "Det": "PP-OCRv6_det_small.onnx",
    "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "Rec": "PP-OCRv6_rec_small.onnx",
}
"""The model files inside the ``rapidocr`` package's ``models/`` folder, by pipeline stage."""
MAX_INPUT_PIXELS = 40_000_000
"""Largest input, in pixels (checked from the header, before the image is decoded). The detector
sees at most 2000 pixels a side: larger images are scaled down for it."""
BOX_COLOUR = (230, 57, 70)

Point = list[float]


class OcrIn(BaseModel):
    image: klieg.Image
    min_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="lines recognised with a lower confidence are left out"
    )


class Line(BaseModel):
    text: str
    confidence: float = Field(description="the recogniser's confidence, 0 to 1")
    box: list[Point] = Field(description="four [x, y] corners, clockwise from the top left")


class OcrOut(BaseModel):
    text: str = Field(description="the lines' texts in reading order, joined by newlines")
    lines: list[Line]
    annotated: klieg.Image


def _on_white(image: PILImage.Image) -> PILImage.Image:
    """``image`` as RGB; pixels with alpha are composited onto white (dark text on a
    transparent background stays readable)."""
    from PIL import Image

    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def reading_order(boxes: list[list[Point]]) -> list[int]:
    """Indexes of ``boxes`` in reading order: rows top to bottom, left to right in a row.

    A box joins the current row when its vertical centre is less than half of the smaller of
    its height and the row's mean height away from the row's mean centre.
    """

    def top(i: int) -> float:
        return min(y for _, y in boxes[i])

    def centre(i: int) -> float:
        ys = [y for _, y in boxes[i]]
        return (min(ys) + max(ys)) / 2

    def height(i: int) -> float:
        ys = [y for _, y in boxes[i]]
        return max(ys) - min(ys)

    rows: list[list[int]] = []
    for i in sorted(range(len(boxes)), key=lambda i: (top(i), centre(i))):
        if rows:
            row = rows[-1]
            row_centre = sum(centre(j) for j in row) / len(row)
            row_height = sum(height(j) for j in row) / len(row)
            if abs(centre(i) - row_centre) < min(height(i), row_height) / 2:
                row.append(i)
                continue
        rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda j: min(x for x, _ in boxes[j]))]


def annotate(image: PILImage.Image, boxes: list[list[Point]]) -> PILImage.Image:
    """A copy of ``image`` with each box outlined."""
    from PIL import ImageDraw

    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(image.size) / 200))
    for box in boxes:
        draw.polygon([(x, y) for x, y in box], outline=BOX_COLOUR, width=width)
    return out


@app.cls(keep_alive=300, max_concurrency=2, request_timeout=120, startup_timeout=300)
class Ocr:
    def setup(self) -> None:
        from pathlib import Path

        import numpy
        import rapidocr
        from PIL import Image, ImageDraw, ImageFont

        models = Path(rapidocr.__file__).parent / "models"
        params: dict[str, Any] = {
            f"{stage}.model_path": str(models / name) for stage, name in MODELS.items()
        }
        # Every line is kept here: ``min_confidence`` is applied per request.
        params.update({"Global.text_score": 0.0, "Global.log_level": "error"})
        self.numpy: Any = numpy
        self.engine: Any = rapidocr.RapidOCR(params=params)
        word = Image.new("RGB", (160, 64), (255, 255, 255))
        ImageDraw.Draw(word).text((8, 8), "Klieg", fill=(0, 0, 0), font=ImageFont.load_default(40))
        self.recognise(word, 0.0)  # the first run of each ONNX session is several times slower

    def recognise(self, image: PILImage.Image, min_confidence: float) -> list[Line]:
        """The text lines the models find in ``image`` with at least ``min_confidence``, in
        the engine's order."""
        bgr = self.numpy.ascontiguousarray(self.numpy.asarray(image)[:, :, ::-1])
        found = self.engine(bgr)
        if found.boxes is None or found.txts is None or found.scores is None:
            return []
        return [
            Line(
                text=str(text),
                confidence=float(score),
                box=[[round(float(x), 1), round(float(y), 1)] for x, y in box],
            )
            for box, text, score in zip(found.boxes.tolist(), found.txts, found.scores, strict=True)
            if float(score) >= min_confidence and str(text).strip()
        ]

    @klieg.endpoint("/")
    def read(self, req: OcrIn) -> OcrOut:
        image = _on_white(req.image.to_pil(loc=["image"], max_pixels=MAX_INPUT_PIXELS))
        found = self.recognise(image, req.min_confidence)
        lines = [found[i] for i in reading_order([line.box for line in found])]
        png = io.BytesIO()
        annotate(image, [line.box for line in lines]).save(png, format="PNG")
        annotated = klieg.Image.from_bytes(
            png.getvalue(), "image/png", "annotated.png", width=image.width, height=image.height
        )
        return OcrOut(text="\n".join(line.text for line in lines), lines=lines, annotated=annotated)
