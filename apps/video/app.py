"""video: frames to an H.264 MP4 (plus an animated GIF preview), and thumbnails from a video.

    POST /{owner}/video/frames-to-video  {"frames": [{"url": ...}, ...], "fps": 8,
                                          "loop_preview": true}
      -> {"video": Video (MP4), "preview": Image (GIF), "width", "height", "num_frames", "fps",
          "encoder"}
    POST /{owner}/video/thumbnails       {"video": {"url": ...}, "count": 4}
      -> {"images": [Image, ...], "timestamps": [seconds, ...]}

Encoding and decoding use PyAV (FFmpeg's libraries, bundled in its wheel) with Pillow images;
numpy is not needed. The H.264 encoder is the first of ``H264_ENCODERS`` that the
installed PyAV build has: PyAV's manylinux wheels (checked with av 18.1.0) ship ``libx264``,
which is used with ``crf=20, preset=veryfast``; ``libopenh264`` is the fallback for builds
without x264. Either way the stream is H.264 in an MP4 container, ``yuv420p``, with the ``moov``
atom first (``+faststart``) so browsers can start playing before the download ends.

Contracts:

- ``/frames-to-video``: the video's size is the first frame's (scaled down to fit
  ``MAX_SIDE`` x ``MAX_SIDE``), rounded up to even numbers as yuv420p needs; every frame is
  scaled to fit that size, keeping its aspect ratio, and centred on black. The video has exactly
  one frame per input frame at a constant ``fps``. The GIF preview is at most ``PREVIEW_SIDE``
  pixels a side, loops forever when ``loop_preview`` is true and plays once otherwise; like
  every GIF encoder, Pillow merges identical consecutive frames into one longer frame.
- ``/thumbnails``: ``count`` frames evenly spaced in time, each the frame shown at the middle of
  one of ``count`` equal slices of the video (found by seeking, so long videos are cheap).
  A frame picked twice (``count`` above the number of frames) is returned once. PNG, at the
  video's size, or with the longest side at most ``max_side``.
- An input that cannot be fetched or decoded, or a frame of more than ``MAX_INPUT_PIXELS``
  pixels, fails with 422 (``klieg.ValidationError``), detail
  ``[{"loc": ["body", "frames", 2], "msg": "...", "type": "image_undecodable"}]`` (or
  ``image_too_large``, ``video_undecodable``, ``url_unreadable``).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

import klieg

if TYPE_CHECKING:
    from PIL import Image as PILImage

app = klieg.App("video", requirements=["av>=14", "pillow>=10"], python="3.11")

H264_ENCODERS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "20", "preset": "veryfast"},
    "libopenh264": {"allow_skip_frames": "0"},
}
"""H.264 encoders in order of preference, with the options each is opened with."""
MAX_FRAMES = 300
MAX_SIDE = 2048
"""Largest video width or height (H.264 level 5.1 and every browser handle it)."""
MAX_INPUT_PIXELS = 40_000_000
PREVIEW_SIDE = 256
MAX_THUMBNAILS = 32


class FramesIn(BaseModel):
    frames: list[klieg.Image] = Field(min_length=1, max_length=MAX_FRAMES)
    fps: int = Field(8, ge=1, le=60)
    loop_preview: bool = Field(True, description="the GIF loops forever, or plays once")


class FramesOut(BaseModel):
    video: klieg.Video
    preview: klieg.Image
    width: int
    height: int
    num_frames: int
    fps: int
    encoder: str


class ThumbnailsIn(BaseModel):
    video: klieg.Video
    count: int = Field(4, ge=1, le=MAX_THUMBNAILS)
    max_side: int | None = Field(None, ge=16, le=4096, description="default: the video's size")


class ThumbnailsOut(BaseModel):
    images: list[klieg.Image]
    timestamps: list[float]


def _load_rgb(media: klieg.Image, loc: list[str | int]) -> PILImage.Image:
    """The frame upright, in RGB (alpha flattened onto black); a 422 naming ``loc`` if it cannot
    be fetched or decoded or has more than ``MAX_INPUT_PIXELS`` pixels."""
    from PIL import Image

    image = media.to_pil(loc=loc, max_pixels=MAX_INPUT_PIXELS)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def h264_encoder() -> tuple[str, dict[str, str]]:
    """The first encoder of ``H264_ENCODERS`` this PyAV build has, and its options."""
    import av

    for name, options in H264_ENCODERS.items():
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name, options
    raise RuntimeError(f"PyAV {av.__version__} has none of the H.264 encoders {H264_ENCODERS}")


def fit_within(width: int, height: int, side: int) -> tuple[int, int]:
    """``width`` x ``height`` scaled down (never up), keeping its aspect ratio, to fit ``side``
    x ``side``."""
    scale = min(1.0, side / width, side / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def video_size(width: int, height: int) -> tuple[int, int]:
    """The size of a video whose first frame is ``width`` x ``height``: fitted to ``MAX_SIDE``
    a side, then rounded up to even numbers (``MAX_SIDE`` is even, so it stays within)."""
    w, h = fit_within(width, height, MAX_SIDE)
    return w + w % 2, h + h % 2


def encode_video(
    frames: Iterable[PILImage.Image],
    size: tuple[int, int],
    fps: int,
    encoder: str,
    options: dict[str, str],
) -> bytes:
    """An H.264 MP4 (yuv420p, ``+faststart``) with one frame per image at ``fps``.

    Every image must be ``size``, with even sides. The images are encoded as the iterable yields
    them, so only one is held at a time. FFmpeg's MP4 muxer reopens the file to move the ``moov``
    atom first, so this writes to a temporary file rather than to memory.
    """
    import av

    with tempfile.TemporaryDirectory(prefix="klieg-video-") as folder:
        path = Path(folder) / "video.mp4"
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream(encoder, rate=fps, options=options)
            if not isinstance(stream, av.video.stream.VideoStream):
                raise RuntimeError(f"{encoder} is not a video encoder")
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            for n, image in enumerate(frames):
                frame = av.VideoFrame.from_image(image).reformat(format="yuv420p")
                frame.pts = n
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        return path.read_bytes()


def encode_gif(frames: list[PILImage.Image], fps: int, loop: bool) -> bytes:
    """An animated GIF of ``frames`` at ``fps`` (GIF delays are in 1/100 s, so rounded)."""
    buffer = io.BytesIO()
    extra: dict[str, Any] = {"loop": 0} if loop else {}
    frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / fps),
        **extra,
    )
    return buffer.getvalue()


def pick_frames(data: bytes, count: int) -> list[tuple[float, PILImage.Image]]:
    """Up to ``count`` (seconds, RGB image) pairs, evenly spaced in time (see the module doc).

    For each target time it seeks to the key frame at or before it and decodes forward to the
    last frame whose timestamp is not after it; raises ``ValueError`` for a video without
    a video stream or a duration, and PyAV's errors for undecodable data.
    """
    import av

    picked: list[tuple[float, PILImage.Image]] = []
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.time_base is None:
            raise ValueError("the video stream has no time base")
        base = stream.time_base
        start = stream.start_time or 0
        duration = stream.duration
        if not duration and container.duration:
            duration = int(container.duration / av.time_base / base)
        if not duration:
            raise ValueError("the video has no duration")
        last_pts: int | None = None
        for i in range(count):
            target = start + (2 * i + 1) * duration // (2 * count)
            container.seek(target, stream=stream, backward=True)
            best: Any = None
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                if best is not None and frame.pts > target:
                    break
                best = frame
                if frame.pts >= target:
                    break
            if best is None or best.pts == last_pts:
                continue
            last_pts = best.pts
            picked.append((float((best.pts - start) * base), best.to_image()))
    if not picked:
        raise ValueError("no frame could be decoded")
    return picked


@app.cls(keep_alive=300, max_concurrency=2, request_timeout=300)
class VideoTools:
    def setup(self) -> None:
        self.encoder, self.encoder_options = h264_encoder()

    @klieg.endpoint("/frames-to-video")
    def frames_to_video(self, req: FramesIn) -> FramesOut:
        from PIL import Image, ImageOps

        first = _load_rgb(req.frames[0], ["frames", 0])
        size = video_size(first.width, first.height)
        preview_size = fit_within(size[0], size[1], PREVIEW_SIDE)
        previews: list[Image.Image] = []

        def frames() -> Iterator[Image.Image]:
            """Each frame fetched, decoded and fitted to ``size`` just before it is encoded."""
            for n, media in enumerate(req.frames):
                loc: list[str | int] = ["frames", n]
                image = first if n == 0 else _load_rgb(media, loc)
                if image.size != size:
                    image = ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=(0, 0, 0))
                previews.append(image.resize(preview_size, Image.Resampling.LANCZOS))
                yield image

        mp4 = encode_video(frames(), size, req.fps, self.encoder, self.encoder_options)
        gif = encode_gif(previews, req.fps, req.loop_preview)
        return FramesOut(
            video=klieg.Video.from_bytes(mp4, "video/mp4", "video.mp4"),
            preview=klieg.Image.from_bytes(
                gif, "image/gif", "preview.gif", width=preview_size[0], height=preview_size[1]
            ),
            width=size[0],
            height=size[1],
            num_frames=len(previews),
            fps=req.fps,
            encoder=self.encoder,
        )

    @klieg.endpoint("/thumbnails")
    def thumbnails(self, req: ThumbnailsIn) -> ThumbnailsOut:
        import av
        from PIL import Image

        data = req.video.read(loc=["video"])
        try:
            picked = pick_frames(data, req.count)
        except (av.FFmpegError, ValueError) as exc:
            msg = f"the {len(data)} bytes are not a video PyAV decodes ({exc})"
            error = {"loc": ["body", "video"], "msg": msg, "type": "video_undecodable"}
            raise klieg.ValidationError([error]) from exc
        images: list[klieg.Image] = []
        for n, (_, image) in enumerate(picked):
            if req.max_side is not None:
                image.thumbnail((req.max_side, req.max_side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            images.append(
                klieg.Image.from_bytes(
                    buffer.getvalue(),
                    "image/png",
                    f"thumbnail-{n}.png",
                    width=image.width,
                    height=image.height,
                )
            )
        return ThumbnailsOut(images=images, timestamps=[round(t, 6) for t, _ in picked])
