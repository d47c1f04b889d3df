"""digits: class-conditional image generation with a diffusion model trained here.

    POST /{owner}/digits {"digits": "2026", "steps": 20, "guidance": 2.0, "seed": 0}
      -> {"image": Image (the strip, upscaled), "digits": [Image, ...] (one per character)}

The model (model.py, ~0.6M parameters, trained by train.py on scikit-learn's 8x8 digits) runs on
CUDA when the runner has a GPU and on the CPU otherwise. Identical inputs give identical images.

The endpoint is batched: the runner gathers up to ``MAX_BATCH_SIZE`` requests (waiting at most
20 ms) and samples all their digits in one pass per step count; every request keeps its own
seeded noise, so it gets the images it would get alone. ``DIGITS_MAX_BATCH_SIZE`` (read when
the app is deployed) sets the batch size, e.g. 1 to turn batching off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import klieg

app = klieg.App(
    "digits",
    requirements=["torch==2.13.0", "safetensors>=0.4", "numpy>=1.26", "pillow>=10"],
    python="3.11",
)

STRIP_SCALE = 16
DIGIT_SCALE = 8
MAX_BATCH_SIZE = int(os.environ.get("DIGITS_MAX_BATCH_SIZE", "16"))


class DigitsIn(BaseModel):
    digits: str = Field(min_length=1, max_length=32, pattern=r"^[0-9]+$")
    steps: int = Field(20, ge=1, le=200)
    guidance: float = Field(2.0, ge=0.0, le=10.0)
    seed: int = Field(0, ge=0)


class DigitsOut(BaseModel):
    image: klieg.Image
    digits: list[klieg.Image]


@app.cls(
    gpu="H100",
    keep_alive=300,
    startup_timeout=600,
    max_batch_size=MAX_BATCH_SIZE,
    batch_wait_ms=20,
)
class Digits:
    def setup(self) -> None:
        import model  # this app's model.py, next to this file
        import torch

        torch.set_num_threads(2)
        self.torch: Any = torch
        self.model_lib: Any = model
        self.model = model.load(str(Path(__file__).parent / "weights.safetensors"))

    @klieg.endpoint("/")
    def generate(self, reqs: list[DigitsIn]) -> list[DigitsOut]:
        samples = self._sample(reqs)
        return [self._render(req, images) for req, images in zip(reqs, samples, strict=True)]

    def _sample(self, reqs: list[DigitsIn]) -> list[Any]:
        """The images of every request: one sampling pass per distinct step count, each request
        with its own seeded noise."""
        out: list[Any] = [None] * len(reqs)
        by_steps: dict[int, list[int]] = {}
        for i, req in enumerate(reqs):
            by_steps.setdefault(req.steps, []).append(i)
        for steps, members in by_steps.items():
            print(f"sampling {len(members)} request(s) with {steps} denoising steps")
            wanted = [[int(c) for c in reqs[i].digits] for i in members]
            pairs = list(zip(members, wanted, strict=True))
            noise = [self.model_lib.initial_noise(len(w), reqs[i].seed) for i, w in pairs]
            guidance = [reqs[i].guidance for i, w in pairs for _ in w]
            with self.torch.inference_mode():
                images = self.model_lib.sample(
                    self.model,
                    [d for w in wanted for d in w],
                    steps=steps,
                    guidance=guidance,
                    noise=self.torch.cat(noise),
                )
            parts = images.split([len(w) for w in wanted])
            for i, part in zip(members, parts, strict=True):
                out[i] = part
        return out

    def _render(self, req: DigitsIn, images: Any) -> DigitsOut:
        wanted = [int(c) for c in req.digits]
        n = len(wanted)
        strip_png = self.model_lib.strip(images, scale=STRIP_SCALE)
        strip = klieg.Image.from_bytes(
            strip_png,
            "image/png",
            f"digits-{req.digits}.png",
            width=(n * 8 + (n - 1)) * STRIP_SCALE,
            height=8 * STRIP_SCALE,
        )
        pngs = self.model_lib.to_png_bytes(images, scale=DIGIT_SCALE)
        side = 8 * DIGIT_SCALE
        singles = [
            klieg.Image.from_bytes(png, "image/png", f"digit-{i}-{d}.png", width=side, height=side)
            for i, (d, png) in enumerate(zip(wanted, pngs, strict=True))
        ]
        return DigitsOut(image=strip, digits=singles)
